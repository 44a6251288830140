#!/usr/bin/env bash
# Train one seed of an experiment on the phantoms and score its explanations (python -m cxrnet.explain.evaluate).
# usage: experiments/explanations/run.sh <experiment> <seed> <output root> [extra train overrides...]
# e.g.   experiments/explanations/run.sh explanations 1 runs/explanations
set -euo pipefail
exp=$1; seed=$2; root=$3; shift 3
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$root"
run=$root/$exp-s$seed
start=$(date +%s)
python -m cxrnet.train +experiment=$exp seed=$seed hydra.run.dir=$run "$@" > $run.train.log 2>&1
mid=$(date +%s)
python -m cxrnet.explain.evaluate checkpoint=$run/checkpoints/best.ckpt data=synthetic seed=null \
  data.options.n_train=800 data.options.n_val=120 data.options.n_test=240 data.options.difficulty=0.5 \
  methods=[native,gradcam,gradcam++,layercam,eigencam] tolerance=3 curve_steps=10 output_dir=$run/explain > $run.explain.log 2>&1
end=$(date +%s)
echo "$exp seed=$seed train=$((mid-start))s explain=$((end-mid))s"
