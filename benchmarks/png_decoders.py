"""How fast can any PNG decoder read a full-size 16-bit radiograph? The ceiling of P3's uncached PNG loader.

    python benchmarks/png_decoders.py [--full-size 2000] [--repeats 7] [--out benchmarks/results/png_decoders.json]

Writes one item of ``data_loading.py``'s dataset (a phantom upscaled to ``--full-size``² with detector noise, as
a 16-bit grayscale PNG, with its two 8-bit mask PNGs) and times one decode of each file to a numpy array with
every decoder that is installed: Pillow and OpenCV (cxrnet's own dependencies), and, when present, libspng
(``pyspng``) and imagecodecs (libpng with zlib-ng). None of these can decode a PNG at reduced size: the whole
zlib stream is inflated, so the time does not depend on the training size.

The JSON's ``ceiling_items_per_s`` is the usable cores ÷ the fastest decoder's time for one item (image and
two masks): the most items/s an uncached loader could reach on this machine if it did nothing but decode,
spread perfectly over every core. Compare it with the training items/s of ``run.py``'s P3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import load_average, machine_section, write_json_atomic
from data_loading import write_dataset


def decoders() -> dict[str, Callable[[Path], np.ndarray]]:
    """Every installed decoder, each returning the stored pixels of a grayscale PNG."""
    found: dict[str, Callable[[Path], np.ndarray]] = {
        "pillow": lambda p: np.asarray(Image.open(p)),
        "opencv": lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED),
    }
    try:
        import pyspng

        found["libspng (pyspng)"] = lambda p: pyspng.load(p.read_bytes())
    except ImportError:
        pass
    try:
        import imagecodecs

        found["libpng + zlib-ng (imagecodecs)"] = lambda p: imagecodecs.png_decode(p.read_bytes())
    except ImportError:
        pass
    return found


def median_ms(decode: Callable[[Path], np.ndarray], path: Path, repeats: int) -> float:
    decode(path)  # warm the page cache and the library
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        decode(path)
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full-size", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "png_decoders.json")
    args = parser.parse_args()
    load_before = load_average()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = write_dataset(Path(tmp), 1, args.full_size, ".png")
        image = next(p for p in root.glob("*.png") if not p.stem.endswith(("_lung", "_infection")))
        masks = sorted(p for p in root.glob("*.png") if p.stem.endswith(("_lung", "_infection")))
        files = {"image (16-bit)": image, **{f"mask ({p.stem.rsplit('_', 1)[1]})": p for p in masks}}
        results: dict[str, Any] = {}
        for name, decode in decoders().items():
            ms = {what: median_ms(decode, path, args.repeats) for what, path in files.items()}
            results[name] = {"ms": ms, "item_ms": round(sum(ms.values()), 2)}
        sizes = {what: round(path.stat().st_size / 2**20, 2) for what, path in files.items()}
    fastest = min(results, key=lambda name: results[name]["item_ms"])
    best = results[fastest]["item_ms"]
    report = {
        "benchmark": "png_decoders",
        "settings": {"full_size": args.full_size, "repeats": args.repeats, "megabytes": sizes},
        "decoders": results,
        "fastest": fastest,
        "usable_cores": cores,
        "ceiling_items_per_s": round(cores * 1000 / best, 1),
        "machine": machine_section(load_before),
    }
    write_json_atomic(args.out, report)
    for name, result in results.items():
        print(f"{name:32s} item {result['item_ms']:6.1f} ms  {result['ms']}")
    print(f"ceiling on {cores} cores: {report['ceiling_items_per_s']} items/s (decode only, {fastest})")


if __name__ == "__main__":
    main()
