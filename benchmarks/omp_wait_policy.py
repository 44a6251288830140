"""What the OpenMP wait policy costs: the same steps in child processes under each policy, interleaved.

    python benchmarks/omp_wait_policy.py [--rounds 3] [--quickstart] [--out benchmarks/results/omp_wait_policy.json]

``OMP_WAIT_POLICY`` is read once, when torch loads its OpenMP runtime, so the policies cannot share a
process: each round starts one child per policy (the order reversed every other round) and every child
times the same things:

* the quickstart's training step (bare loop, float32, channels-last: what ``precision=auto`` trains it in);
* the quickstart network's forward pass for inference (bf16 autocast, ``torch.inference_mode``, batch 8);
* the issue's reference step (resnet18 + U-Net, 256 px, batch 8) at float32 contiguous and at the default
  precision with channels-last, and their ratio.

Policies: ``PASSIVE`` (idle threads sleep at once: what the tests and the other benchmarks set, so that a
busy 2-core machine is not slowed by threads spinning), ``default`` (the variable unset: the OpenMP runtime
spins for a while, then sleeps; what a user's shell gives) and ``ACTIVE`` (spin). ``--quickstart`` also
runs the whole ``python -m cxrnet.train +experiment=quickstart`` under ``PASSIVE`` and ``default``, one after
the other, and records ``run/train_seconds`` and the headline test metrics of each.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _machine import load_average, machine_section, write_json_atomic

HERE = Path(__file__).resolve().parent
POLICIES = ("PASSIVE", "default", "ACTIVE")
METRICS = ("test/lung/dice_pooled", "test/infection/dice_pooled", "test/cls/macro_f1", "run/train_seconds")


def policy_env(policy: str) -> dict[str, str]:
    """The environment of a child under ``policy`` (``default``: the variable removed)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    return env


# ----------------------------------------------------------------------------------- child


def child(steps: int, quick: bool) -> dict[str, float]:
    """Seconds per step (or per forward) of each measured thing, in this process's wait policy."""
    import torch

    from cxrnet.devices import resolve_precision

    from _training import BareLoop, autocast, cxrnet_loss, training_setup

    small = ("data.image_size=64", "data.batch_size=2") if quick else ()
    tiny_data = ("data.options.n_train=32", "data.options.n_val=2", "data.options.n_test=2")
    default = resolve_precision("auto", "cpu")
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cxrnet-omp-") as tmp:
        quickstart = training_setup(["+experiment=quickstart", *tiny_data, *small], Path(tmp) / "q", 2)
        loop = BareLoop(
            copy.deepcopy(quickstart.net), cxrnet_loss(quickstart.module.loss), quickstart, "32-true"
        )
        result["quickstart_train_step_s"] = loop.seconds_per_step(1, steps)

        net = copy.deepcopy(quickstart.net).eval().to(memory_format=torch.channels_last)
        batch = torch.rand(2 if quick else 8, 1, *quickstart.batches[0]["image"].shape[-2:])
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(default):
            net(batch)
            start = time.perf_counter()
            for _ in range(4 * steps):
                net(batch)
            result["quickstart_forward_s"] = (time.perf_counter() - start) / (4 * steps)

        reference = [
            "model.encoder=resnet18",
            "model.decoder=unet",
            "data.image_size=64" if quick else "data.image_size=256",
            "data.batch_size=2" if quick else "data.batch_size=8",
            *tiny_data,
        ]
        setup = training_setup(reference, Path(tmp) / "r", 2)
        loss = cxrnet_loss(setup.module.loss)
        for name, precision, channels_last in (
            ("reference_float32_contiguous_s", "32-true", False),
            ("reference_default_channels_last_s", default, True),
        ):
            loop = BareLoop(copy.deepcopy(setup.net), loss, setup, precision, channels_last=channels_last)
            result[name] = loop.seconds_per_step(1, steps)
    result["reference_speedup"] = (
        result["reference_float32_contiguous_s"] / result["reference_default_channels_last_s"]
    )
    return result


# ----------------------------------------------------------------------------------- parent


def run_child(policy: str, steps: int, quick: bool) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--steps", str(steps)]
    if quick:
        command.append("--quick")
    done = subprocess.run(
        command, env=policy_env(policy), cwd=HERE, capture_output=True, text=True, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {policy} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_quickstart(policy: str, root: Path) -> dict[str, Any]:
    out = root / f"quickstart-{policy}"
    command = [sys.executable, "-m", "cxrnet.train", "+experiment=quickstart", f"output_dir={out}"]
    done = subprocess.run(command, env=policy_env(policy), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {policy} quickstart failed:\n{done.stderr[-4000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: metrics.get(key) for key in METRICS}


def summarise(rounds: list[dict[str, dict[str, float]]], policies: tuple[str, ...]) -> dict[str, Any]:
    """Per policy and quantity the median over rounds, and each policy's median time relative to PASSIVE."""
    keys = list(rounds[0][policies[0]])
    medians = {
        policy: {key: round(statistics.median(r[policy][key] for r in rounds), 4) for key in keys}
        for policy in policies
    }
    relative = {
        policy: {
            key: round(statistics.median(r["PASSIVE"][key] / r[policy][key] for r in rounds), 3)
            for key in keys
            if key.endswith("_s")
        }
        for policy in policies
        if policy != "PASSIVE"
    }
    return {"median": medians, "speedup_over_passive": relative}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--quickstart", action="store_true", help="also time the whole quickstart per policy")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, numbers mean nothing")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "omp_wait_policy.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps, args.quick)), flush=True)
        return 0

    load_before = load_average()
    started = time.perf_counter()
    rounds: list[dict[str, dict[str, float]]] = []
    for index in range(args.rounds):
        order = POLICIES if index % 2 == 0 else POLICIES[::-1]
        rounds.append({policy: run_child(policy, args.steps, args.quick) for policy in order})
        print(f"round {index + 1}: " + json.dumps(rounds[-1]), flush=True)
    output: dict[str, Any] = {
        "suite": "benchmarks/omp_wait_policy.py",
        "quick": args.quick,
        "protocol": {
            "rounds": args.rounds,
            "steps": args.steps,
            "order": "policies reversed every other round",
        },
        "rounds": rounds,
        **summarise(rounds, POLICIES),
    }
    if args.quickstart:
        with tempfile.TemporaryDirectory(prefix="cxrnet-omp-quickstart-") as tmp:
            output["quickstart"] = {
                policy: run_quickstart(policy, Path(tmp)) for policy in ("PASSIVE", "default")
            }
        print("quickstart: " + json.dumps(output["quickstart"]), flush=True)
    # This process never loads torch's OpenMP runtime for work; its own policy is recorded as it is.
    output["machine"] = machine_section(load_before)
    output["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(args.out, output)
    print(f"wrote {args.out} in {output['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
