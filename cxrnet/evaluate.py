"""Evaluate a checkpoint on a dataset split:
``python -m cxrnet.evaluate checkpoint=<ckpt> data=<name> [data.root=<dir>] [split=test] output_dir=<out>``.

Writes into ``<out>``:

- ``metrics.json``: flat keys prefixed by task (``cls/accuracy``, ``cls/covid19/sensitivity``, ``lung/dice/mean``,
  ``infection/nonempty/dice/mean``, ``severity/map/brixia/mae``, ``explanation/pointing_game``, ``leakage/...``),
  documented in :data:`cxrnet.evaluation.summary.METRIC_DOCS`; undefined values are ``null``.
- ``metrics_ci.json``: 95 % patient-level bootstrap intervals of the headline metrics, with the resample count.
- ``run.json``: provenance (checkpoint, SHA-256 of its training config, data, split, leakage check, versions).
- ``plots/*.png`` and ``report.md`` / self-contained ``report.html``.

Before scoring anything, the split is compared with the training data recorded in the checkpoint
(:mod:`cxrnet.leakage`); a split sharing patients or near-duplicate images is refused unless
``allow_leakage=true``. A head that saw no training target (:mod:`cxrnet.provenance`; e.g. the infection
head of a model trained on lung masks only) is not scored as if it meant something: its metrics are
``null``, ``heads/*`` keys say why, and its plots and report rows are left out. A model trained on
synthetic phantoms only that is evaluated on real data carries that caveat in run.json and the report.
``evaluate(cfg)`` does the work; ``main`` is the thin Hydra wrapper.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cxrnet.collect import collect
from cxrnet.command import CONFIG_PATH, config_digest, open_split
from cxrnet.data.records import Record
from cxrnet.evaluation.bootstrap import CI
from cxrnet.evaluation.results import Collected
from cxrnet.evaluation.summary import compute_metrics, confidence_intervals, withheld, withhold_untrained
from cxrnet.leakage import NOT_CHECKED, LeakageReport, guard_split, item_hash
from cxrnet.provenance import SYNTHETIC, caveats, head_metrics, untrained_outputs
from cxrnet.report.evaluation import NOTE, build_report, write_plots

log = logging.getLogger(__name__)

SOFTWARE = ("torch", "pytorch-lightning", "segmentation-models-pytorch", "timm", "cxrnet")
#: At most this many shared patients and duplicated files are listed in run.json (all are counted).
MAX_LISTED = 100


def _hasher(datamodule: Any) -> Callable[[Any], int]:
    """Item hashes from the datamodule's cache when it has one (no full-size file is decoded again)."""
    cache = getattr(datamodule, "cache", None)
    if cache is None:
        return item_hash

    def cached(item: Any) -> int:
        return int(cache.info(item).hash) if isinstance(item, Record) else item_hash(item)

    return cached


def software_versions() -> dict[str, str]:
    """Versions of Python and the packages that determine the numbers."""
    versions = {"python": platform.python_version()}
    for package in SOFTWARE:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def to_json(value: Any) -> Any:
    """NaN and infinities become ``None`` (JSON ``null``); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(to_json(content), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _command() -> str:
    if HydraConfig.initialized():
        return " ".join(["python -m cxrnet.evaluate", *HydraConfig.get().overrides.task])
    return "cxrnet.evaluate.evaluate(cfg) from Python"


def _provenance(
    cfg: DictConfig,
    checkpoint: Path,
    meta: dict[str, Any],
    data_cfg: DictConfig,
    collected: Collected,
    leakage: LeakageReport | None,
    allowed: bool,
    untrained: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The content of ``run.json``: what was evaluated, how, with what software."""
    paths = collected.paths
    data = OmegaConf.to_container(data_cfg, resolve=True)
    leak: dict[str, Any] = {"checked": False, "summary": NOT_CHECKED}
    if leakage is not None:
        leak = {
            **leakage.as_dict(),
            "summary": leakage.describe(paths),
            "shared_patients": leakage.shared_patients[:MAX_LISTED],
            "near_duplicate_files": [paths[i] for i in leakage.eval_items_with_duplicates[:MAX_LISTED]],
        }
    return {
        "checkpoint": str(checkpoint),
        "checkpoint_config_sha256": config_digest(meta),
        "model": meta.get("model", {}),
        "classes": collected.classes,
        "temperature": meta.get("temperature"),
        "precision": collected.precision,
        "data": {k: v for k, v in data.items() if k != "_target_"},
        "split": cfg.split,
        "sources": sorted(set(collected.sources)),
        "heads": {
            "training": meta.get("heads"),
            "severity_targets": list(meta.get("severity_targets", [])),
            "untrained": sorted(untrained),
        },
        "caveats": training_caveats(meta, collected),
        "leakage": {**leak, "allowed": allowed},
        "bootstrap": OmegaConf.to_container(cfg.bootstrap, resolve=True),
        "command": _command(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "software": software_versions(),
        "note": NOTE,
    }


def training_caveats(meta: dict[str, Any], collected: Collected) -> list[str]:
    """The model's training caveats (:func:`cxrnet.provenance.caveats`) when the evaluated data is not all phantoms.

    Args:
        meta: the checkpoint's metadata (``heads``, ``training_data``, ``severity_targets``).
        collected: the scored split; only its ``sources`` are read.

    Returns:
        e.g. ``["trained on synthetic phantoms only; not validated on real radiographs"]``; ``[]`` when the
        evaluated items are all phantoms or the model's training raises no caveat.
    """
    if set(collected.sources) <= {SYNTHETIC}:
        return []
    return caveats(meta.get("heads"), meta.get("training_data"), meta.get("severity_targets", []))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Score a checkpoint on one split and write metrics, intervals, figures and the report.

    Args:
        cfg: a composed ``evaluate.yaml`` config.

    Returns:
        The content of ``metrics.json`` (NaN where a value is undefined).

    Raises:
        LeakageError: the split overlaps the training data and ``allow_leakage`` is false.
    """
    out_dir = Path(cfg.output_dir)
    opened = open_split(cfg)
    meta, dataset = opened.meta, opened.dataset
    leakage = guard_split(
        meta.get("training_data"),
        dataset,
        allow=bool(cfg.allow_leakage),
        max_distance=int(cfg.leakage_max_distance),
        num_workers=opened.num_workers,
        name=opened.name,
        hash_item=_hasher(opened.datamodule),
    )
    temperature = meta.get("temperature")
    temperature = float(temperature) if temperature is not None else None
    log.info("scoring %d items of %s on %s at %s", len(dataset), opened.name, opened.device, opened.precision)
    collected = collect(
        opened.net,
        dataset,
        batch_size=opened.batch_size,
        num_workers=opened.num_workers,
        device=opened.device,
        n_examples=int(cfg.report.n_examples),
        precision=opened.precision,
    )
    severity_targets = list(meta.get("severity_targets", []))
    untrained = untrained_outputs(meta.get("heads"), severity_targets)
    if untrained:
        log.warning(
            "heads without training targets; their metrics are withheld (null): %s",
            ", ".join(sorted(untrained)),
        )
    metrics: dict[str, Any] = withhold_untrained(compute_metrics(collected, temperature), untrained)
    metrics |= head_metrics(meta.get("heads"), severity_targets)
    leak = leakage.as_dict() if leakage is not None else {"checked": False}
    metrics |= {f"leakage/{k}": v for k, v in leak.items()}
    metrics["leakage/allowed"] = bool(leakage is not None and leakage.leaked and cfg.allow_leakage)
    boot = cfg.bootstrap
    metrics["bootstrap/n_resamples"] = int(boot.n_resamples)
    intervals: dict[str, CI] = confidence_intervals(
        collected,
        temperature,
        n_resamples=int(boot.n_resamples),
        confidence=float(boot.confidence),
        seed=int(boot.seed),
    )
    intervals = {key: ci for key, ci in intervals.items() if not withheld(key, untrained)}
    plots = write_plots(collected, out_dir / "plots", temperature, untrained)

    allowed = metrics["leakage/allowed"]
    run = _provenance(cfg, Path(cfg.checkpoint), meta, opened.data, collected, leakage, allowed, untrained)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "metrics.json", metrics)
    _write_json(
        out_dir / "metrics_ci.json",
        {
            "n_resamples": int(boot.n_resamples),
            "confidence": float(boot.confidence),
            "seed": int(boot.seed),
            "resampling_unit": "patient",
            "n_patients": metrics["n_patients"],
            "intervals": {key: ci.as_dict() for key, ci in intervals.items()},
        },
    )
    _write_json(out_dir / "run.json", run)
    build_report(out_dir, collected, metrics, intervals, plots, run)
    log.info("evaluation written to %s", out_dir)
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
