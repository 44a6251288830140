"""Explanation speed: images/s of every explainer against a forward (and a forward + backward) of the same net.

    python benchmarks/explain_speed.py [--checkpoint <ckpt>] [--size 128] [--batch 16] [--rounds 5]
        [--methods native,gradcam,gradcam++,layercam,eigencam] [--precision auto]
        [--out benchmarks/results/explain_speed.json]

Without ``--checkpoint`` the quickstart's network (``+experiment=quickstart``) is built with random weights:
speed does not depend on what the weights learned. Every arm runs once per round, interleaved
(``_rounds.interleave``), at the default inference precision (:func:`cxrnet.devices.inference_precision`),
on one batch of phantoms. Reported per method: images/s, and the ratios

- native / forward: the native map is a by-product of the forward pass (target >= 0.9, i.e. "no slower");
- CAM / (forward + backward): a gradient CAM needs one backward of the class score (target >= 0.9);

Score-CAM is left out by default: it runs encoder 2 once per channel of its layer (hundreds of passes).
Writes one JSON with the machine section.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cxrnet.data.phantoms import make_phantom
from cxrnet.devices import autocast, inference_precision
from cxrnet.explain import get_explainer

from _machine import load_average, machine_section, write_json_atomic
from _rounds import Arm, Target, interleave, ratio, series


def quickstart_net() -> torch.nn.Module:
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=quickstart"])
    return instantiate(cfg.model, _convert_="all")


def load_net(checkpoint: str | None) -> torch.nn.Module:
    if checkpoint is None:
        return quickstart_net()
    from cxrnet.checkpoint import load_network

    return load_network(checkpoint)[0]


def phantom_batch(size: int, batch: int) -> torch.Tensor:
    """B×1×size×size phantoms, normalised as the quickstart trains (mean 0.5, std 0.25)."""
    labels = ("normal", "bacterial", "viral", "covid19")
    images = [make_phantom(seed=i, size=size, label=labels[i % 4]).image for i in range(batch)]
    return (torch.from_numpy(np.stack(images))[:, None].float() - 0.5) / 0.25


def timed(fn: Any, images: int) -> float:
    start = time.perf_counter()
    fn()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", default="native,gradcam,gradcam++,layercam,eigencam")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "explain_speed.json"))
    args = parser.parse_args()
    load_before = load_average()
    torch.manual_seed(0)
    net = load_net(args.checkpoint).eval()
    precision = inference_precision(args.precision, torch.device("cpu"))
    x = phantom_batch(args.size, args.batch)
    methods = [m for m in args.methods.split(",") if m]
    explainers = {name: get_explainer(name, net) for name in methods}

    def forward() -> None:
        with torch.no_grad(), autocast(precision, "cpu"):
            net(x)

    def forward_backward() -> None:
        with autocast(precision, "cpu"):
            logits = net(x.clone().requires_grad_(True)).class_logits
        logits.max(dim=1).values.sum().backward()
        net.zero_grad(set_to_none=True)

    def explain(name: str) -> None:
        with autocast(precision, "cpu"):
            explainers[name](x)

    arms = {
        "forward": Arm("images/s", lambda: timed(forward, args.batch)),
        "forward+backward": Arm("images/s", lambda: timed(forward_backward, args.batch)),
        **{m: Arm("images/s", lambda m=m: timed(lambda: explain(m), args.batch)) for m in methods},
    }
    values = interleave(arms, args.rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    ratios = {}
    for m in methods:
        reference = "forward" if m == "native" else "forward+backward"
        ratios[f"{m}/{reference}"] = ratio(
            values,
            units,
            m,
            reference,
            Target(">=", 0.9),
            f"{m} images/s over {reference} images/s (>= 0.9: explaining is no slower than the pass it needs)",
        )
    result = {
        "benchmark": "explain_speed",
        "settings": {
            "checkpoint": args.checkpoint or "quickstart network, random init",
            "size": args.size,
            "batch": args.batch,
            "rounds": args.rounds,
            "precision": precision,
            "layers": {m: getattr(e, "layer_name", None) for m, e in explainers.items()},
        },
        "arms": {name: series(v, units[name], digits=2) for name, v in values.items()},
        "ratios": ratios,
        "machine": machine_section(load_before),
    }
    write_json_atomic(Path(args.out), result)
    for name, r in ratios.items():
        print(
            f"{name}: {r['ratio']['median']:.2f} (target >= 0.9: {'pass' if r['target']['pass'] else 'FAIL'})"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
