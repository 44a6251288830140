"""Is data loading the bottleneck? Loader items/s, uncached and cached, against the model's training items/s.

    python benchmarks/data_loading.py [--n-images 60] [--full-size 2000] [--out benchmarks/results/data_loading.json]

Writes full-size 16-bit PNG radiographs (phantoms upscaled, with noise) and 8-bit masks into a temporary
folder in the ``folder`` manifest layout, then measures at the quickstart's settings (128 px, batch 16, default
augmentation):

* the uncached pipeline (every epoch decodes the full-size files) with 0 and 2 workers;
* the cached pipeline (``data.cache_dir``) after a warm-up pass that fills the cache, with 0 and 2 workers;
* the quickstart model's training throughput (``tu-mobilenetv3_large_100``, decoder channels
  ``[64, 32, 24, 16, 8]``, forward + backward + AdamW step on the CPU).

Loader throughput is measured over one full epoch after a warm-up epoch (workers are persistent), the model
over ``--steps`` steps after two warm-up steps, with 1 and with the default number of torch threads (the
faster one is used: on a busy machine two threads can be much slower than one). ``ratio`` = loader items/s
÷ model items/s: above 1 the loader keeps up with training (ignoring that both share the CPU in a real run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cxrnet.data.phantoms import CLASSES, generate_phantoms
from cxrnet.datamodule import CXRDataModule
from cxrnet.losses import MultiTaskLoss
from cxrnet.models import create_model

QUICKSTART = {"image_size": 128, "batch_size": 16}
SEVERITY = ["geographic_extent", "brixia"]


def write_dataset(root: Path, n: int, full_size: int, seed: int = 0) -> Path:
    """``n`` phantoms upscaled to ``full_size``² as 16-bit PNG with lung/infection masks and a manifest."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,patient_id,lung_mask,infection_mask"]
    for i, item in enumerate(generate_phantoms(n, seed=seed, size=256)):
        big = cv2.resize(item.image, (full_size, full_size), interpolation=cv2.INTER_CUBIC)
        big = np.clip(big + rng.normal(0, 0.01, big.shape), 0, 1)  # detector noise: no trivially small PNGs
        name = f"img{i:03d}"
        cv2.imwrite(str(root / f"{name}.png"), np.round(big * 65535).astype(np.uint16))
        for kind, mask in (("lung", item.lung_mask), ("infection", item.infection_mask)):
            up = cv2.resize(
                mask.astype(np.uint8) * 255, (full_size, full_size), interpolation=cv2.INTER_NEAREST
            )
            cv2.imwrite(str(root / f"{name}_{kind}.png"), up)
        rows.append(f"{name}.png,{item.label},P{i},{name}_lung.png,{name}_infection.png")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def datamodule(root: Path, workers: int, cache_dir: Path | None) -> CXRDataModule:
    return CXRDataModule(
        name="folder",
        root=str(root),
        classes=list(CLASSES),
        num_workers=workers,
        severity_targets=SEVERITY,
        split_fractions={"train": 1.0},
        cache_dir=str(cache_dir) if cache_dir else None,
        duplicate_max_distance=None,
        **QUICKSTART,
    )


def loader_rate(root: Path, workers: int, cache_dir: Path | None) -> dict[str, float]:
    """Items/s over one epoch after a warm-up epoch (and, with a cache, after the pass that fills it)."""
    dm = datamodule(root, workers, cache_dir)
    result: dict[str, float] = {}
    if cache_dir is not None:
        start = time.perf_counter()
        dm.prepare_data()
        result["cache_fill_items_per_s"] = len(dm.split_items()["train"]) / (time.perf_counter() - start)
    dm.setup("fit")
    loader = dm.train_dataloader()
    for epoch in range(2):
        start, items = time.perf_counter(), 0
        for batch in loader:
            items += len(batch["image"])
        if epoch == 1:
            result["items_per_s"] = items / (time.perf_counter() - start)
    del loader
    return result


def model_rate(batch: dict[str, Any], steps: int, threads: int) -> float:
    """Training items/s of the quickstart model with ``threads`` intra-op threads: forward + backward + AdamW."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = create_model(
        classes=list(CLASSES),
        encoder="tu-mobilenetv3_large_100",
        decoder="unet",
        decoder_channels=[64, 32, 24, 16, 8],
        severity_targets=SEVERITY,
        severity_scales={"geographic_extent": 8, "brixia": 18},
    )
    loss_fn = MultiTaskLoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    scales = net.severity_head.scales if net.severity_head is not None else None
    net.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(batch["image"]), batch, severity_scales=scales)["total"]
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(batch["image"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=60)
    parser.add_argument("--full-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_loading.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cxrnet-bench-") as tmp:
        root = write_dataset(Path(tmp), args.n_images, args.full_size)
        megabytes = sum(p.stat().st_size for p in Path(tmp).glob("*.png")) / 2**20
        loaders: dict[str, dict[str, float]] = {}
        for workers in (0, 2):
            loaders[f"uncached_workers{workers}"] = loader_rate(root, workers, None)
            print("uncached", workers, loaders[f"uncached_workers{workers}"], flush=True)
        cache = Path(tmp) / "cache"
        for workers in (0, 2):  # the first run fills the cache, the second finds it full
            loaders[f"cached_workers{workers}"] = loader_rate(root, workers, cache)
            print("cached", workers, loaders[f"cached_workers{workers}"], flush=True)
        dm = datamodule(root, 0, cache)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
    default_threads = torch.get_num_threads()
    models = {f"threads{n}": model_rate(batch, args.steps, n) for n in sorted({1, default_threads})}
    print("model", models, flush=True)
    model = max(models.values())  # a busy machine can make 2 threads slower than 1: take the best
    result = {
        "settings": {
            **QUICKSTART,
            "n_images": args.n_images,
            "full_size": args.full_size,
            "format": "16-bit grayscale PNG + two 8-bit mask PNGs per item",
            "dataset_megabytes": round(megabytes, 1),
            "augment": "default",
            "model": "tu-mobilenetv3_large_100, unet, decoder_channels [64,32,24,16,8], AdamW, CPU",
        },
        "loader_items_per_s": {k: round(v["items_per_s"], 2) for k, v in loaders.items()},
        "cache_fill_items_per_s": round(loaders["cached_workers0"]["cache_fill_items_per_s"], 2),
        "model_train_items_per_s": round(model, 2),
        "model_train_items_per_s_by_threads": {k: round(v, 2) for k, v in models.items()},
        "ratio_loader_over_model": {k: round(v["items_per_s"] / model, 2) for k, v in loaders.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_default_threads": default_threads,
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
