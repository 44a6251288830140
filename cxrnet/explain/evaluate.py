"""Compare explanation methods against infection masks: ``python -m cxrnet.explain.evaluate``.

::

    python -m cxrnet.explain.evaluate checkpoint=<ckpt> data=<name> [data.root=<dir>] [split=test] \\
        [methods=[native,gradcam,gradcam++]] [output=<file.json>]

Every method explains every item of the split that has an infection mask; each map is scored with
:func:`cxrnet.explain.metrics.explanation_scores` against that mask (and the lung mask, where there is one,
for the explanation-in-lung share). Items whose infection mask is empty (e.g. ``normal``) have no target:
their mask-based scores are NaN and left out of the means (they are counted), but their lung share counts.
Grad-CAM explains each image's *predicted* class.

The data's ``image_size``, ``mean``, ``std`` and ``classes`` are taken from the checkpoint, so the maps are
computed on exactly the inputs the model was trained on; only the dataset has to be named.

``evaluate_explanations(cfg)`` does the work and can be called from Python; ``main`` is the Hydra wrapper,
which also prints the comparison table.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from rich import box
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from cxrnet.checkpoint import data_config_for_checkpoint, load_network
from cxrnet.data.dataset import collate
from cxrnet.devices import autocast, inference_precision, resolve_device
from cxrnet.explain import EXPLAINERS, get_explainer
from cxrnet.explain.metrics import explanation_scores

log = logging.getLogger(__name__)


def _aggregate(rows: list[dict[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """Mean over the finite values of each score, and how many there were (``mean`` is None for none)."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    summary: dict[str, dict[str, float | int | None]] = {}
    for key in keys:
        values = np.array([row.get(key, math.nan) for row in rows], dtype=float)
        finite = values[np.isfinite(values)]
        summary[key] = {"mean": float(finite.mean()) if finite.size else None, "n": int(finite.size)}
    return summary


def evaluate_explanations(cfg: DictConfig) -> dict[str, Any]:
    """Score each explanation method on the items of a split that have infection masks.

    Args:
        cfg: a composed ``explain_evaluate.yaml`` config (``checkpoint``, ``data``, ``split``, ``methods``,
            ``output``, ``batch_size``, ``k_percent``, ``tolerance``, ``device``).

    Returns:
        ``{"checkpoint", "data", "split", "classes", "counts", "methods"}`` where ``methods[name]`` maps each
        score key (``pointing_game``, ``average_precision``, ``infection_share``, ``top{k}_iou``,
        ``top{k}_f1``, ``lung_share``) to ``{"mean": float | None, "n": int}`` and ``seconds_per_image`` to the
        explainer's wall time per image. ``counts`` holds ``items`` (in the split), ``with_infection_mask``
        (evaluated), ``empty_infection_mask`` (skipped for mask-based scores) and ``with_lung_mask``.
        The same dict is written as JSON to ``cfg.output`` when it is set.

    Raises:
        ValueError: no checkpoint, an unknown split or method, or a split without infection masks.
    """
    if not cfg.get("checkpoint"):
        raise ValueError("no checkpoint: add checkpoint=<file.ckpt> (e.g. <run>/checkpoints/best.ckpt)")
    methods = list(cfg.methods)
    unknown = [name for name in methods if name not in EXPLAINERS]
    if unknown or not methods:
        raise ValueError(f"unknown explanation methods {unknown}; valid: {', '.join(EXPLAINERS)}")
    net, meta = load_network(cfg.checkpoint)
    device = resolve_device(cfg.get("device", "cpu"))
    precision = inference_precision(str(cfg.get("precision") or "auto"), device)
    net.to(device)
    with open_dict(cfg):  # the config then records what was actually evaluated
        cfg.data = data_config_for_checkpoint(cfg.data, meta, cfg.get("seed"))
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("test")
    if cfg.split not in datamodule.datasets:
        raise ValueError(f"unknown split {cfg.split!r}; valid: {', '.join(datamodule.datasets)}")
    dataset = datamodule.datasets[cfg.split]
    # Selected without reading pixels: Record and RawItem both say whether an infection mask exists.
    with_mask = [i for i, item in enumerate(dataset.items) if item.infection_mask is not None]
    if not with_mask:
        raise ValueError(
            f"the {cfg.split} split of data={cfg.data.name} ({len(dataset)} items) has no infection masks; "
            "choose a dataset that provides them (e.g. synthetic, qata, covid_qu_ex)"
        )
    loader = DataLoader(Subset(dataset, with_mask), batch_size=int(cfg.batch_size), collate_fn=collate)
    explainers = {name: get_explainer(name, net) for name in methods}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    empty = with_lungs = 0
    k_percent = [float(k) for k in cfg.k_percent]

    # first-call set-up (allocations, kernel choice) kept out of the timings
    with torch.no_grad(), autocast(precision, device):
        net(dataset[with_mask[0]]["image"][None].to(device))
    for batch in loader:
        images = batch["image"].to(device)
        infection = batch["infection_mask"][:, 0].numpy() > 0.5
        lungs = batch["lung_mask"][:, 0].numpy() > 0.5
        has_lungs = batch["has_lung_mask"].numpy()
        empty += int((~infection.any(axis=(1, 2))).sum())
        with_lungs += int(has_lungs.sum())
        for name, explainer in explainers.items():
            start = time.perf_counter()
            with autocast(precision, device):
                maps = explainer(images).float().cpu().numpy()
            seconds[name] += time.perf_counter() - start
            for i, saliency in enumerate(maps):
                lung = lungs[i] if has_lungs[i] else None
                rows[name].append(
                    explanation_scores(saliency, infection[i], lung, k_percent, tolerance=int(cfg.tolerance))
                )

    results: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data.name),
        "split": str(cfg.split),
        "precision": precision,
        "classes": list(meta["classes"]),
        "counts": {
            "items": len(dataset),
            "with_infection_mask": len(with_mask),
            "empty_infection_mask": empty,
            "with_lung_mask": with_lungs,
        },
        "methods": {
            name: {**_aggregate(rows[name]), "seconds_per_image": seconds[name] / len(with_mask)}
            for name in methods
        },
    }
    if cfg.get("output"):
        output = Path(cfg.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        log.info("explanation scores written to %s", output)
    return results


def results_table(results: dict[str, Any]) -> Table:
    """A rich table of :func:`evaluate_explanations` results: one row per method, one column per score."""
    first = next(iter(results["methods"].values()))
    topk = [key for key in first if key.startswith("top")]
    columns = [("pointing_game", "pointing"), ("average_precision", "AP")]
    columns += [(key, f"{key[3:].split('_')[0]}% {'IoU' if key.endswith('iou') else 'F1'}") for key in topk]
    columns += [("lung_share", "in lungs")]
    counts = results["counts"]
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Explanations vs infection masks: {results['data']} / {results['split']}",
        caption=(
            f"{counts['with_infection_mask']} items with infection masks, {counts['empty_infection_mask']} of "
            f"them empty (no mask-based scores); lung share over {counts['with_lung_mask']} with lung masks"
        ),
    )
    table.add_column("method", no_wrap=True)
    for _, title in columns:
        table.add_column(title, justify="right", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("s / image", justify="right")
    for name, scores in results["methods"].items():
        cells = []
        for key, _ in columns:
            mean = scores.get(key, {}).get("mean")
            cells.append("–" if mean is None else f"{mean:.3f}")
        n = scores["average_precision"]["n"]
        table.add_row(name, *cells, str(n), f"{scores['seconds_per_image']:.3f}")
    return table


def _run(cfg: DictConfig) -> None:
    results = evaluate_explanations(cfg)
    console = Console()
    if not console.is_terminal:  # a pipe or a log file: rich would squeeze the table into 80 columns
        console = Console(width=160)
    console.print(results_table(results))
    if not cfg.get("output"):
        log.info("add output=<file.json> to save these scores")


def main() -> None:
    """Command-line entry point (Hydra): see ``cxrnet/conf/explain_evaluate.yaml``."""
    from cxrnet.export import register_resolvers

    register_resolvers()
    hydra.main(version_base="1.3", config_path="../conf", config_name="explain_evaluate")(_run)()


if __name__ == "__main__":
    main()
