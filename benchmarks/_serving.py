"""Batch prediction to time: ``cxrnet.predict.predict(cfg)`` over a folder, and the bare batched forward pass.

The predict job is composed from ``conf/predict.yaml`` with Hydra's compose API, as the command line
composes it, and run in chunks of ``limit`` files on the same ``output_dir`` (each run resumes where the last
stopped), so that the chunks interleave with the bare forward pass and the process's memory can be read after
100 and after 1,000 files.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import nn

from cxrnet.checkpoint import save_checkpoint
from cxrnet.data.images import read_image
from cxrnet.data.phantoms import generate_phantoms
from cxrnet.data.transforms import Preprocessing, letterbox
from cxrnet.devices import autocast, inference_precision
from cxrnet.inference import load_model
from cxrnet.predict import forward_threads, predict

from _machine import rss_mb
from _rounds import Arm, Target, interleave, ratio, series
from _sections import FLOAT32, Context


def write_phantom_files(folder: Path, n_files: int, distinct: int, size: int = 256) -> list[Path]:
    """``n_files`` 8-bit grayscale phantom PNGs of ``size``² px, cycling through ``distinct`` phantoms."""
    folder.mkdir(parents=True, exist_ok=True)
    images = [np.round(item.image * 255).astype(np.uint8) for item in generate_phantoms(distinct, size=size)]
    paths = []
    for i in range(n_files):
        path = folder / f"cxr{i:05d}.png"
        cv2.imwrite(str(path), images[i % distinct])
        paths.append(path)
    return paths


def write_checkpoint(path: Path, net: nn.Module, data: DictConfig) -> Path:
    """A checkpoint of ``net`` (random init) with the training config's preprocessing."""
    preprocessing = Preprocessing(image_size=int(data.image_size), mean=float(data.mean), std=float(data.std))
    return save_checkpoint(path, net, preprocessing)


def compose_predict(overrides: Sequence[str]) -> DictConfig:
    """``predict.yaml`` composed with ``overrides``, as ``python -m cxrnet.predict`` composes it."""
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name="predict", overrides=list(overrides))


def predict_precision(cfg: DictConfig) -> str:
    """The precision ``predict(cfg)`` runs at: its ``precision`` key resolved for its device."""
    return inference_precision(str(cfg.get("precision") or "auto"), str(cfg.device))


class PredictChunks:
    """``predict(cfg)`` over ``input_dir``, ``files_per_run`` new files per measurement, resuming each time.

    Attributes:
        rss: ``(files predicted so far, RSS in MiB)`` after each measurement.
        precision: what the predict job runs at (see :func:`predict_precision`).
        reported_precision: the precisions predict's summaries named (should be just ``precision``).
    """

    def __init__(
        self,
        checkpoint: Path,
        input_dir: Path,
        output_dir: Path,
        files_per_run: int,
        overlays: bool,
        batch_size: int,
        warmup_dir: Path,
    ) -> None:
        self.overrides = [
            f"checkpoint={checkpoint}",
            f"batch_size={batch_size}",
            f"overlays={str(overlays).lower()}",
            "progress=false",
            "device=cpu",
        ]
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.warmup_dir = warmup_dir
        self.files_per_run = files_per_run
        self.files_done = 0
        self.rss: list[tuple[int, float | None]] = []
        self.wall_seconds: list[float] = []
        self.reported_precision: set[str] = set()
        self.precision = predict_precision(self._cfg(input_dir, output_dir, files_per_run))

    def _cfg(self, input_dir: Path, output_dir: Path, limit: int | None) -> DictConfig:
        return compose_predict(
            [*self.overrides, f"input={input_dir}", f"output_dir={output_dir}", f"limit={limit or 'null'}"]
        )

    def warmup(self) -> None:
        """One untimed run over the warm-up folder into its own output folder."""
        predict(self._cfg(self.warmup_dir, self.output_dir.with_name(self.output_dir.name + "-warmup"), None))

    def images_per_second(self) -> float:
        """Images/s of the next ``files_per_run`` files: predicted files over predict's own loop time.

        The loop time (``summary["seconds"]``) leaves out loading the checkpoint and reading what earlier
        chunks wrote, which a single run over the folder does once, not once per chunk; the wall time of
        each chunk is kept in :attr:`wall_seconds`.
        """
        cfg = self._cfg(self.input_dir, self.output_dir, self.files_per_run)
        start = time.perf_counter()
        summary = predict(cfg)
        self.wall_seconds.append(time.perf_counter() - start)
        if summary["n_error"]:
            raise RuntimeError(f"predict failed on {summary['n_error']} files; see {self.output_dir}")
        self.files_done += summary["n_ok"]
        self.reported_precision.add(str(summary.get("precision")))
        self.rss.append((self.files_done, rss_mb()))
        return summary["n_ok"] / summary["seconds"]


class BareForward:
    """The network of ``load_model(checkpoint).net`` on preloaded, normalised batches; images/s.

    The batches are the letterboxed, normalised ``files`` in batches of ``batch_size`` (the last one
    short, as predict forms them), in the predictor's memory format (``Predictor.channels_last``), under
    the precision's autocast and ``torch.inference_mode``, as :meth:`cxrnet.inference.Predictor._forward`
    runs them; left out: reading, letterboxing, the output maps and everything after.
    """

    def __init__(
        self,
        checkpoint: Path,
        files: Sequence[Path],
        batch_size: int,
        precision: str,
        threads: int | None = None,
    ) -> None:
        self.threads = threads  # torch threads while measuring (None: as they are)
        predictor = load_model(checkpoint, batch_size=batch_size, precision=precision)
        self.precision = predictor.precision
        self.net = predictor.net
        p = predictor.preprocessing
        channels_last = predictor.channels_last
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        squares = np.stack([letterbox(read_image(path), p.image_size) for path in files])[:, None]
        self.batches = [
            ((torch.from_numpy(squares[i : i + batch_size]) - p.mean) / p.std).contiguous(
                memory_format=memory_format
            )
            for i in range(0, len(squares), batch_size)
        ]
        self.images = len(squares)
        self.memory_format = "channels_last" if channels_last else "contiguous"

    @torch.inference_mode()
    def images_per_second(self) -> float:
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            start = time.perf_counter()
            with autocast(self.precision, "cpu"):
                for batch in self.batches:
                    self.net(batch)
            return self.images / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(before)


def p4_predict(ctx: Context) -> dict[str, Any]:
    """P4: predict images/s (overlays on, off) / bare forward images/s, and RSS over the files predicted."""
    setup, sizes = ctx.quickstart(), ctx.sizes
    rss_start = rss_mb()
    checkpoint = write_checkpoint(ctx.tmp / "p4" / "quickstart.ckpt", setup.net, setup.cfg.data)
    files = write_phantom_files(ctx.tmp / "p4" / "input", sizes.predict_files, sizes.distinct_phantoms)
    warm = ctx.tmp / "p4" / "warmup"
    write_phantom_files(warm, 16, 2)
    batch_size = 8  # predict.yaml's default
    chunks = {
        overlays: PredictChunks(
            checkpoint,
            files[0].parent,
            ctx.tmp / "p4" / f"out-overlays-{'on' if overlays else 'off'}",
            sizes.predict_chunk,
            overlays,
            batch_size,
            warm,
        )
        for overlays in (True, False)
    }
    predict_precision = chunks[True].precision
    # The bare forward at torch's threads and at the threads predict runs its network on (num_threads=auto:
    # one core left for reading, maps and overlays); a ratio divides by the faster of the two in each round.
    predict_threads = forward_threads(compose_predict([]).num_threads, "cpu")
    thread_counts = sorted({torch.get_num_threads(), predict_threads or torch.get_num_threads()})
    precisions = list(dict.fromkeys([*ctx.precisions, predict_precision]))
    forwards = {
        (p, t): BareForward(checkpoint, files[: sizes.predict_chunk], batch_size, p, threads=t)
        for p in precisions
        for t in thread_counts
    }
    arms = {
        "predict_overlays_on": Arm("images/s", chunks[True].images_per_second, chunks[True].warmup),
        "predict_overlays_off": Arm("images/s", chunks[False].images_per_second, chunks[False].warmup),
        **{f"bare/{p}/threads={t}": Arm("images/s", f.images_per_second) for (p, t), f in forwards.items()},
    }
    rounds = sizes.predict_files // sizes.predict_chunk
    values = interleave(arms, rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    for p in precisions:
        per_thread = [values[f"bare/{p}/threads={t}"] for t in thread_counts]
        values[f"bare/{p}"] = [max(round_values) for round_values in zip(*per_thread)]
        units[f"bare/{p}"] = "images/s"
    ratios = {
        f"predict_overlays_{state}_over_bare/{predict_precision}": ratio(
            values,
            units,
            f"predict_overlays_{state}",
            f"bare/{predict_precision}",
            Target(">=", 0.8),
            f"predict images/s (overlays {state}) / bare batched forward images/s, at {predict_precision}; "
            f"the faster bare forward of threads {thread_counts} in each round",
        )
        for state in ("on", "off")
    }
    if ctx.default != predict_precision:
        ratios |= {
            f"predict_overlays_{state}_over_bare/{ctx.default}": ratio(
                values,
                units,
                f"predict_overlays_{state}",
                f"bare/{ctx.default}",
                meaning=f"predict at {predict_precision} / bare forward at the default {ctx.default}",
            )
            for state in ("on", "off")
        }
    if ctx.default != FLOAT32:
        ratios["speedup_default_over_float32/bare"] = ratio(
            values,
            units,
            f"bare/{ctx.default}",
            f"bare/{FLOAT32}",
            meaning=f"bare forward images/s at {ctx.default} / at float32",
        )
    memory = {}
    for overlays, runs in chunks.items():
        (first_files, first), (last_files, last) = runs.rss[0], runs.rss[-1]
        entry: dict[str, Any] = {
            "rss_mb_after_files": dict(runs.rss),
            "first": {"files": first_files, "rss_mb": first},
            "last": {"files": last_files, "rss_mb": last},
            "growth_mb": round(last - first, 1) if first and last else None,
            "ratio": round(last / first, 4) if first and last else None,
        }
        if overlays and first and last:
            entry["target"] = Target("<=", 1.1).to_dict(last / first)
        memory[f"overlays_{'on' if overlays else 'off'}"] = entry
    return {
        "model": setup.describe(),
        "checkpoint": "quickstart network, random init (cxrnet.checkpoint.save_checkpoint)",
        "input": {
            "files": sizes.predict_files,
            "distinct_phantoms": sizes.distinct_phantoms,
            "format": "8-bit grayscale PNG, 256 px",
        },
        "batch_size": batch_size,
        "predict_precision": predict_precision,
        "predict_precision_reported": sorted(set().union(*(r.reported_precision for r in chunks.values()))),
        "predict_threads": predict_threads,
        "bare_forward": {
            f"{p}/threads={t}": {
                "precision": f.precision,
                "memory_format": f.memory_format,
                "images": f.images,
                "threads": t,
                **series(values[f"bare/{p}/threads={t}"], "images/s"),
            }
            for (p, t), f in forwards.items()
        },
        "rate": "predict: files / predict's own loop time (summary seconds), per chunk of files",
        "predict_wall_seconds_per_chunk": {
            f"overlays_{'on' if o else 'off'}": [round(s, 3) for s in r.wall_seconds]
            for o, r in chunks.items()
        },
        "rss_mb_before_section": rss_start,
        "rss_note": "RSS of this whole process: it includes the sections run before this one",
        "memory": memory,
        "protocol": {"rounds": rounds, "files_per_round": sizes.predict_chunk},
        "ratios": ratios,
    }
