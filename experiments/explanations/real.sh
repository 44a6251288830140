#!/usr/bin/env bash
# Score every explanation method of one checkpoint on the real films that have masks (issue 13, point 6):
#   - cohen-dev's test split: hand-drawn lung masks only, so the in-lung share, the curves and the sanity check;
#   - the COVID-QU-Ex sample: all 12 items as one split (labels unused: the maps explain the predicted class),
#     4 with non-empty infection masks.
# usage: experiments/explanations/real.sh <checkpoint> <output root> <cohen-dev dir> <covid-qu-ex-sample dir>
set -euo pipefail
ckpt=$1; root=$2; cohen=$3; cqe=$4
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$root"
common=(methods=[native,gradcam,gradcam++,layercam,eigencam] tolerance=3 curve_steps=10)
python -m cxrnet.explain.evaluate checkpoint="$ckpt" data=cohen data.root="$cohen" split=test \
  "${common[@]}" output_dir="$root/cohen" > "$root/cohen.log" 2>&1
# One train item is the least the splitter accepts; the other 11 are scored.
python -m cxrnet.explain.evaluate checkpoint="$ckpt" data=mixed data.root="$cqe" \
  '+data.sources=[{name: covid_qu_ex, root: ., options: {part: both}, use_labels: false}]' \
  'data.split_fractions={train:0.05,val:0.0,test:0.95}' split=test \
  "${common[@]}" output_dir="$root/covid_qu_ex" > "$root/covid_qu_ex.log" 2>&1
echo "written: $root/cohen/explanations.json $root/covid_qu_ex/explanations.json"
