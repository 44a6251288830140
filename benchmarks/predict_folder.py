"""Batch prediction speed and memory: seconds per image and peak RSS over a folder, in stages.

    python benchmarks/predict_folder.py --checkpoint <ckpt> --input <dir>            # an existing folder
    python benchmarks/predict_folder.py --checkpoint <ckpt> --phantoms 500 --stages 100,500
    [--batch-size 8] [--no-overlays] [--device cpu] [--out benchmarks/results/predict_folder.json]

Runs :func:`cxrnet.predict.predict` (the code behind ``python -m cxrnet.predict``) into a temporary output
folder, stopping after each stage (``limit``) and resuming, so the process's peak RSS after, e.g., 100 and 500
files shows whether memory stays flat as the number of files grows. ``--phantoms N`` writes N phantom
radiographs (``--phantom-size`` pixels, 8-bit PNG) into a temporary folder first. Writes one JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module

from cxrnet.data.phantoms import write_phantom_folder
from cxrnet.predict import predict


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB (Linux ``/proc``; peak from ``getrusage``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        current = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        current = float("nan")
    return round(current, 1), round(peak, 1)


def run(args: argparse.Namespace, input_dir: Path, out_dir: Path) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    done = 0
    totals = {"n_ok": 0, "n_error": 0, "seconds": 0.0}
    for target in args.stages or [None]:
        overrides = [
            f"checkpoint={args.checkpoint}",
            f"input={input_dir}",
            f"output_dir={out_dir}",
            f"batch_size={args.batch_size}",
            f"device={args.device}",
            f"overlays={str(not args.no_overlays).lower()}",
            "progress=false",
        ]
        if target is not None:
            overrides.append(f"limit={target - done}")
        with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
            cfg = compose(config_name="predict", overrides=overrides)
        summary = predict(cfg)
        for key in totals:
            totals[key] += summary[key]
        done += summary["n_ok"] + summary["n_error"]
        current, peak = rss_mb()
        stages.append(
            {
                "files_done": done,
                "seconds_per_image_this_stage": summary["seconds_per_image"],
                "rss_mb": current,
                "peak_rss_mb": peak,
            }
        )
        print(
            f"after {done} files: {summary['seconds_per_image']} s/image, RSS {current} MiB, peak {peak} MiB"
        )
        if summary["n_remaining"] == 0:
            break
    n = totals["n_ok"] + totals["n_error"]
    return {
        **totals,
        "seconds": round(totals["seconds"], 2),
        "seconds_per_image": round(totals["seconds"] / n, 4) if n else None,
        "peak_rss_mb": stages[-1]["peak_rss_mb"],
        "stages": stages,
        "overlay_bytes_per_image": (
            round(sum(p.stat().st_size for p in (out_dir / "overlays").glob("*.png")) / totals["n_ok"])
            if totals["n_ok"] and not args.no_overlays
            else None
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--input", type=Path, help="folder of images (default: generated phantoms)")
    parser.add_argument(
        "--phantoms", type=int, default=500, help="number of phantoms when --input is not given"
    )
    parser.add_argument("--phantom-size", type=int, default=256)
    parser.add_argument(
        "--stages",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="comma-separated file counts after which to record memory, e.g. 100,500",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-overlays", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict_folder.json")
    args = parser.parse_args()

    start_rss, load_before = rss_mb(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cxrnet_predict_bench_") as tmp:
        input_dir = args.input
        if input_dir is None:
            t = time.perf_counter()
            write_phantom_folder(Path(tmp) / "phantoms", args.phantoms, size=args.phantom_size)
            input_dir = Path(tmp) / "phantoms" / "images"
            print(f"wrote {args.phantoms} phantoms in {time.perf_counter() - t:.1f} s")
        result = run(args, input_dir, Path(tmp) / "out")
    report = {
        "input": str(args.input) if args.input else f"{args.phantoms} phantoms at {args.phantom_size} px",
        "checkpoint": str(args.checkpoint),
        "batch_size": args.batch_size,
        "device": args.device,
        "overlays": not args.no_overlays,
        "rss_before_mb": start_rss[0],
        **result,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", ""),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
