"""The benchmark suite of issue 11: speed ratios measured in one process, interleaved, into one JSON.

    python benchmarks/run.py [--out benchmarks/results/run.json] [--quick] [--only P1,P4]
                             [--omp-wait-policy passive|default|active]

Ratios (each side measured in the same rounds, alternating; see ``benchmarks/README.md``):

* P1 framework step: ``CXRNetModule`` through a ``pytorch_lightning.Trainer`` / a bare PyTorch loop
  (target <= 1.05);
* P2 training FLOP/s (``torch.utils.flop_counter``) / dense matmul FLOP/s at the same precision;
* P3 loader items/s (uncached, cached) / model training items/s (targets >= 1 and >= 5);
* P4 predict images/s / bare forward images/s (target >= 0.8), and RSS after 100 and 1,000 files
  (target RSS(1000) / RSS(100) <= 1.1);
* P5 CXRNet training step / a plain smp U-Net with an aux classification head (target <= 1.6);
* ref: the issue's reference step (resnet18 + U-Net, 256 px, batch 8), float32 / default precision
  (target >= 2.5).

The model is the quickstart experiment's (``conf/experiment/quickstart.yaml``), randomly initialised;
each model measurement runs at float32 and at the default precision (``cxrnet.devices.resolve_precision``).
``--quick`` runs tiny sizes (a smoke test; its numbers mean nothing). The JSON is rewritten after every
section, so a failed or interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Idle OpenMP threads spin by default and, on a small shared machine, slow everything else down: PASSIVE
# unless the environment or --omp-wait-policy says otherwise (``default`` unsets it: the runtime's own
# spin-then-sleep, what a user's shell gives). Read when torch loads, so looked at before torch is imported;
# the value in effect is recorded in the machine section.
OMP_FLAG = "--omp-wait-policy"
OMP_POLICIES = ("passive", "active", "default")


def _omp_wait_policy(argv: list[str]) -> str | None:
    """The value of ``--omp-wait-policy`` in ``argv`` (``None``: not given; argparse checks it later)."""
    for index, arg in enumerate(argv):
        if arg == OMP_FLAG and index + 1 < len(argv):
            return argv[index + 1].lower()
        if arg.startswith(OMP_FLAG + "="):
            return arg.split("=", 1)[1].lower()
    return None


_policy = _omp_wait_policy(sys.argv[1:])
if _policy == "default":
    os.environ.pop("OMP_WAIT_POLICY", None)
elif _policy in ("passive", "active"):
    os.environ["OMP_WAIT_POLICY"] = _policy.upper()
else:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from cxrnet.devices import resolve_precision  # noqa: E402

from _loading import p3_loader  # noqa: E402
from _machine import load_average, machine_section, write_json_atomic  # noqa: E402
from _sections import FLOAT32, Context, Sizes, p1_framework, p2_flops, p5_plain_unet, reference  # noqa: E402
from _serving import p4_predict  # noqa: E402

SECTIONS = ("P1", "P2", "P3", "P4", "P5", "ref")

FULL = Sizes(
    train_overrides=("data.options.n_train=64", "data.options.n_val=8", "data.options.n_test=8"),
    n_batches=4,
    reference_overrides=(
        "model.encoder=resnet18",
        "model.decoder=unet",
        "data.image_size=256",
        "data.batch_size=8",
        "data.options.n_train=16",
        "data.options.n_val=8",
        "data.options.n_test=8",
    ),
    rounds=3,
    framework_rounds=4,
    framework_warmup=1,
    framework_steps=9,  # 10 steps a fit = trainer.log_every_n_steps: each timed window has one logging step
    warmup_steps=1,
    steps=2,
    loader_items=48,
    full_size=2000,
    loader_rounds=3,
    cached_epochs=10,
    predict_files=1000,
    predict_chunk=100,
    distinct_phantoms=200,
    reference_rounds=3,
    reference_steps=2,
    matmul_n=2048,
)

QUICK = Sizes(
    train_overrides=(
        "data.image_size=64",
        "data.batch_size=2",
        "data.options.n_train=4",
        "data.options.n_val=2",
        "data.options.n_test=2",
    ),
    n_batches=2,
    reference_overrides=(
        "model.encoder=resnet18",
        "model.decoder=unet",
        "data.image_size=64",
        "data.batch_size=2",
        "data.options.n_train=4",
        "data.options.n_val=2",
        "data.options.n_test=2",
    ),
    rounds=2,
    framework_rounds=2,
    framework_warmup=1,
    framework_steps=1,
    warmup_steps=0,
    steps=1,
    loader_items=4,
    full_size=256,
    loader_rounds=2,
    cached_epochs=2,
    predict_files=16,
    predict_chunk=8,
    distinct_phantoms=4,
    reference_rounds=2,
    reference_steps=1,
    matmul_n=256,
)


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "P1": p1_framework,
    "P2": p2_flops,
    "P3": p3_loader,
    "P4": p4_predict,
    "P5": p5_plain_unet,
    "ref": reference,
}


# ----------------------------------------------------------------------------------- driver


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per ratio of every finished section: its median, spread and target."""
    lines = []
    for section, result in results.items():
        for key, entry in (result.get("ratios") or {}).items():
            lines.append(
                {
                    "ratio": f"{section} {key}",
                    "median": entry["ratio"]["median"],
                    "spread": entry["ratio"]["spread"],
                    "target": entry["target"],
                }
            )
        for key, entry in (result.get("memory") or {}).items():
            if entry.get("target"):
                lines.append(
                    {
                        "ratio": f"{section} rss_last_over_first/{key}",
                        "median": entry["ratio"],
                        "spread": None,
                        "target": entry["target"],
                    }
                )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "run.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, numbers mean nothing")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        OMP_FLAG,
        choices=OMP_POLICIES,
        type=str.lower,
        help="OpenMP wait policy of this run (default: PASSIVE unless OMP_WAIT_POLICY is set; 'default' "
        "unsets it). Applied before torch loads, from the command line",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in RUNNERS]
    if unknown or not args.sections:
        parser.error(f"--only {args.only!r}: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    return args


def quiet() -> None:
    """Keep the terminal to this script's progress lines: Lightning's banners and known notices off."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    # The preloaded batches need no workers, and a round logs fewer steps than an epoch of a real run.
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*`validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet()
    sizes = QUICK if args.quick else FULL
    load_before = load_average()
    threads = torch.get_num_threads()
    default = resolve_precision("auto", "cpu")
    precisions = [FLOAT32] if default == FLOAT32 else [FLOAT32, default]
    started = time.perf_counter()
    output: dict[str, Any] = {
        "suite": "benchmarks/run.py (issue 11)",
        "quick": args.quick,
        "sections": args.sections,
        "precisions": precisions,
        "precision_note": (
            "the non-float32 arms run the CPU's bf16 path (resolve_precision('auto') without a network); for a "
            "given network precision=auto picks 32-true when it has depthwise convolutions (the quickstart's "
            "MobileNetV3) and bf16-mixed otherwise (the resnet18 reference): cxrnet.devices.resolve_precision"
        ),
        "sizes": dataclasses.asdict(sizes),
        "results": {},
        "errors": {},
    }

    def write() -> None:
        output["machine"] = machine_section(load_before)
        output["machine"]["torch_threads_at_start"] = threads
        output["seconds"] = round(time.perf_counter() - started, 1)
        output["summary"] = summary(output["results"])
        write_json_atomic(args.out, output)

    with tempfile.TemporaryDirectory(prefix="cxrnet-run-") as tmp:
        ctx = Context(sizes, Path(tmp), precisions)
        for section in args.sections:
            print(f"[{time.perf_counter() - started:7.1f} s] {section} ...", flush=True)
            start = time.perf_counter()
            try:
                result = RUNNERS[section](ctx)
            except Exception:
                output["errors"][section] = traceback.format_exc()
                print(output["errors"][section], flush=True)
            else:
                result["seconds"] = round(time.perf_counter() - start, 1)
                output["results"][section] = result
                for line in summary({section: result}):
                    target = line["target"]
                    verdict = ""
                    if target is not None:
                        verdict = f"  target {target['op']} {target['value']}: "
                        verdict += "pass" if target["pass"] else "FAIL"
                    print(f"    {line['ratio']}: {line['median']}{verdict}", flush=True)
            write()
    print(f"wrote {args.out} in {time.perf_counter() - started:.0f} s", flush=True)
    return 1 if output["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
