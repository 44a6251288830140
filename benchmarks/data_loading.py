"""Is data loading the bottleneck? Loader items/s, uncached and cached, against the model's training items/s.

    python benchmarks/data_loading.py [--n-images 48] [--full-size 2000] [--steps 5] [--out <file.json>]

Writes ``--n-images`` full-size radiographs (phantoms upscaled to ``--full-size``² px, with detector noise)
twice, as 8-bit JPEG (quality 95) and as 16-bit PNG, each item with two 8-bit PNG masks (lung, infection),
in the ``folder`` manifest layout, then measures at two settings, the quickstart's (128 px, batch 16, ``light``
augmentation) and 256 px (batch 8, ``default`` augmentation):

* the uncached loader (every epoch decodes the files, at reduced scale for the training size) with 0 and 2
  DataLoader workers: items/s over one epoch after a warm-up epoch (workers are persistent);
* the one-time cache fill (``prepare_data()`` with ``data.cache_dir``: read, hash, letterbox and write every
  item) with ``data.num_workers`` 0 and 2 (2: two fill processes);
* the cached loader after the fill, with 0 and 2 workers;
* the model's training items/s (forward, loss, backward, gradient clipping, AdamW step) in bf16-mixed and in
  float32, with the network and batches in channels-last memory format, as ``cxrnet.train`` runs it: the
  quickstart network (``+experiment=quickstart``) at both settings, bf16 with 1 and with the default number
  of torch threads, and the default network (``model=cxrnet``: resnet18 + U-Net) at 256 px at the precision it
  trains at.

``ratio_loader_over_model`` is loader items/s / model items/s, the model at the precision ``precision=auto``
trains it at (``trained_at``: float32 for the depthwise quickstart network on CPUs, see
``cxrnet.devices.resolve_precision``), at its faster thread count: at 1 or above the loader keeps up with training
(measured apart: in a real run both share the CPU). ``decode_ms`` times single reads of one item's files.
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
import PIL
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import features

from cxrnet.data.images import decode_image, read_image
from cxrnet.data.masks import read_mask
from cxrnet.data.phantoms import CLASSES, generate_phantoms
from cxrnet.datamodule import CXRDataModule
from cxrnet.devices import autocast_dtype, resolve_precision
from cxrnet.train import resolve_trainer_precision

SETTINGS = {  # name: image size, batch size, augmentation
    "128px_batch16": (128, 16, "light"),  # the quickstart's (conf/experiment/quickstart.yaml)
    "256px_batch8": (256, 8, "default"),
}
FORMATS = {"jpeg8": ".jpg", "png16": ".png"}
SEVERITY = ["geographic_extent", "brixia"]  # the synthetic data config's
WORKERS = (0, 2)


def write_dataset(root: Path, n: int, full_size: int, suffix: str, seed: int = 0) -> Path:
    """``n`` phantoms upscaled to ``full_size``² as 8-bit JPEG or 16-bit PNG, 8-bit PNG masks, a manifest."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["path,label,patient_id,lung_mask,infection_mask"]
    for i, item in enumerate(generate_phantoms(n, seed=seed, size=256)):
        big = cv2.resize(item.image, (full_size, full_size), interpolation=cv2.INTER_CUBIC)
        big = np.clip(big + rng.normal(0, 0.01, big.shape), 0, 1)  # detector noise: no trivially small files
        name = f"img{i:03d}"
        if suffix == ".jpg":
            cv2.imwrite(
                str(root / f"{name}.jpg"),
                np.round(big * 255).astype(np.uint8),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
        else:
            cv2.imwrite(str(root / f"{name}.png"), np.round(big * 65535).astype(np.uint16))
        for kind, mask in (("lung", item.lung_mask), ("infection", item.infection_mask)):
            up = cv2.resize(
                mask.astype(np.uint8) * 255, (full_size, full_size), interpolation=cv2.INTER_NEAREST
            )
            cv2.imwrite(str(root / f"{name}_{kind}.png"), up)
        rows.append(f"{name}{suffix},{item.label},P{i},{name}_lung.png,{name}_infection.png")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return root


def datamodule(root: Path, setting: str, workers: int, cache_dir: Path | None) -> CXRDataModule:
    size, batch, augment = SETTINGS[setting]
    return CXRDataModule(
        name="folder",
        root=str(root),
        classes=list(CLASSES),
        image_size=size,
        batch_size=batch,
        num_workers=workers,
        severity_targets=SEVERITY,
        augment=augment,
        split_fractions={"train": 1.0},
        cache_dir=str(cache_dir) if cache_dir else None,
        duplicate_max_distance=None,
    )


def loader_rate(dm: CXRDataModule) -> float:
    """Train-loader items/s over one epoch after a warm-up epoch."""
    dm.setup("fit")
    loader = dm.train_dataloader()
    rate = 0.0
    for _warm_up_then_measured in range(2):
        start, items = time.perf_counter(), 0
        for batch in loader:
            items += len(batch["image"])
        rate = items / (time.perf_counter() - start)
    del loader
    return rate


def fill_rate(dm: CXRDataModule) -> float:
    """Items/s of the one-time cache fill (``prepare_data`` on an empty cache)."""
    start = time.perf_counter()
    dm.prepare_data()
    return len(dm.split_items()["train"]) / (time.perf_counter() - start)


def train_config(model: str, size: int) -> Any:
    """The training config of ``python -m cxrnet.train`` with the quickstart or the default network."""
    overrides = ["+experiment=quickstart"] if model == "quickstart" else []
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name="train", overrides=[*overrides, f"data.image_size={size}"])


def model_rate(model: str, batch: dict[str, Any], steps: int, threads: int, precision: str) -> float:
    """Training items/s of a network of ``cxrnet.train`` on ``batch``, as its Trainer steps it."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = train_config(model, int(batch["image"].shape[-1]))
    network = OmegaConf.to_container(cfg.model, resolve=True)
    network.pop("compile", None)  # a training option, not a network argument (as cxrnet.train.build_module)
    net = instantiate(network, _convert_="all")
    loss_fn = instantiate(cfg.loss, _convert_="all")
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    scales = net.severity_head.scales if net.severity_head is not None else None
    channels_last = bool(cfg.channels_last)
    image = batch["image"]
    if channels_last:
        net.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    inputs = {**batch, "image": image}
    dtype = autocast_dtype(precision)
    clip = float(cfg.trainer.get("gradient_clip_val") or 0)
    net.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(net(inputs["image"]), inputs, severity_scales=scales)["total"]
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(image) / (time.perf_counter() - start)


def decode_times(root: Path, sizes: list[int], repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of one read of an item's image (full size and reduced) and of one mask."""

    def median_ms(read: Any) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            read()
            times.append(time.perf_counter() - start)
        return round(1000 * float(np.median(times)), 1)

    image = next(p for p in sorted(root.glob("img000.*")) if p.suffix in (".jpg", ".png"))
    mask = root / "img000_lung.png"
    result = {"image_full": median_ms(lambda: read_image(image))}
    for size in sizes:
        factor = decode_image(image, target_size=size).factor
        result[f"image_for_{size}px_factor{factor}"] = median_ms(
            lambda size=size: decode_image(image, target_size=size)
        )
    result["mask_full"] = median_ms(lambda: read_mask(mask))
    return result


def machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    flags: set[str] = set()
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    return {
        "cpu_model": model,
        "cpu_flags": {flag: flag in flags for flag in wanted},
        "cpu_count": os.cpu_count(),
        "torch_default_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "libjpeg_turbo": bool(features.check_feature("libjpeg_turbo")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--full-size", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data_loading.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    default_threads = torch.get_num_threads()
    precision = resolve_precision("auto", "cpu")  # the CPU's low precision (bf16-mixed with bf16 units)
    # What precision=auto trains each network at (float32 for the depthwise quickstart network on CPUs)
    trained_at = {
        model: resolve_trainer_precision(train_config(model, 128)) for model in ("quickstart", "default")
    }
    loaders: dict[str, dict[str, dict[str, float]]] = {}
    decode: dict[str, dict[str, float]] = {}
    megabytes: dict[str, float] = {}
    batches: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="cxrnet-bench-") as tmp:
        for fmt, suffix in FORMATS.items():
            root = write_dataset(Path(tmp) / fmt, args.n_images, args.full_size, suffix)
            megabytes[fmt] = round(sum(p.stat().st_size for p in root.glob("img*")) / 2**20, 1)
            decode[fmt] = decode_times(root, [size for size, _, _ in SETTINGS.values()])
            print(fmt, "decode ms", decode[fmt], flush=True)
            for setting in SETTINGS:
                rates: dict[str, float] = {}
                for workers in WORKERS:
                    rates[f"uncached_workers{workers}"] = loader_rate(
                        datamodule(root, setting, workers, None)
                    )
                for workers in WORKERS:  # each fill starts from an empty cache
                    cache = Path(tmp) / f"cache-{fmt}-{setting}-{workers}"
                    rates[f"cache_fill_workers{workers}"] = fill_rate(
                        datamodule(root, setting, workers, cache)
                    )
                    rates[f"cached_workers{workers}"] = loader_rate(datamodule(root, setting, workers, cache))
                loaders.setdefault(fmt, {})[setting] = {k: round(v, 2) for k, v in rates.items()}
                print(fmt, setting, loaders[fmt][setting], flush=True)
                if setting not in batches:
                    dm = datamodule(root, setting, 0, cache)
                    dm.setup("fit")
                    batches[setting] = next(iter(dm.train_dataloader()))
    models: dict[str, dict[str, float]] = {}
    for setting, batch in batches.items():
        runs = {
            f"{precision}_threads{n}": model_rate("quickstart", batch, args.steps, n, precision)
            for n in sorted({1, default_threads})
        }
        runs[f"32-true_threads{default_threads}"] = model_rate(
            "quickstart", batch, args.steps, default_threads, "32-true"
        )
        models[f"quickstart_{setting}"] = {k: round(v, 2) for k, v in runs.items()}
        print("model", setting, models[f"quickstart_{setting}"], flush=True)
    resnet = model_rate(
        "default", batches["256px_batch8"], max(2, args.steps // 2), default_threads, trained_at["default"]
    )
    models["default_256px_batch8"] = {f"{trained_at['default']}_threads{default_threads}": round(resnet, 2)}
    print("model default 256", models["default_256px_batch8"], flush=True)

    def best(name: str) -> float:  # the precision training uses for the network, at the faster thread count
        chosen = trained_at["quickstart" if name.startswith("quickstart") else "default"]
        return max(v for k, v in models[name].items() if k.startswith(chosen))

    reference = {setting: best(f"quickstart_{setting}") for setting in SETTINGS}
    ratios = {
        fmt: {
            setting: {
                k: round(v / reference[setting], 2)
                for k, v in rates.items()
                if not k.startswith("cache_fill")
            }
            for setting, rates in by_setting.items()
        }
        for fmt, by_setting in loaders.items()
    }
    ratios_default_model = {
        fmt: {
            k: round(v / best("default_256px_batch8"), 2)
            for k, v in by_setting["256px_batch8"].items()
            if not k.startswith("cache_fill")
        }
        for fmt, by_setting in loaders.items()
    }
    result = {
        "settings": {
            "settings": {
                name: {"image_size": s, "batch_size": b, "augment": a} for name, (s, b, a) in SETTINGS.items()
            },
            "n_images": args.n_images,
            "full_size": args.full_size,
            "formats": {
                "jpeg8": "8-bit grayscale JPEG (quality 95) + two 8-bit mask PNGs per item",
                "png16": "16-bit grayscale PNG + two 8-bit mask PNGs per item",
            },
            "dataset_megabytes": megabytes,
            "precision": precision,
            "trained_at": trained_at,
            "channels_last": True,
            "models": {
                "quickstart": "+experiment=quickstart: tu-mobilenetv3_large_100, unet [64,32,24,16,8], gated",
                "default": "model=cxrnet: resnet18, unet",
            },
            "steps": args.steps,
            "seconds": round(time.perf_counter() - started, 1),
        },
        "loader_items_per_s": loaders,
        "decode_ms": decode,
        "model_train_items_per_s": models,
        "model_reference_items_per_s": reference,
        "ratio_loader_over_model": ratios,
        "ratio_loader_over_default_model_256px": ratios_default_model,
        "machine": machine(load_before),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
