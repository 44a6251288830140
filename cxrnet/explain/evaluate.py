"""Compare explanation methods against infection masks: ``python -m cxrnet.explain.evaluate``.

::

    python -m cxrnet.explain.evaluate checkpoint=<ckpt> data=<name> [data.root=<dir>] [split=test] \\
        [methods=[native,gradcam,gradcam++]] [output_dir=<dir>]

Every method explains every item of the split that has an infection or a lung mask; each map is scored with
:func:`cxrnet.explain.metrics.explanation_scores` against that mask (and the lung mask, where there is one,
for the explanation-in-lung share). Items whose infection mask is empty (e.g. ``normal``) have no target:
their mask-based scores are NaN and left out of the means (they are counted), but their lung share counts.
The CAM methods explain each image's *predicted* class.

Faithfulness, not just overlap: for every method, deletion and insertion curves
(:mod:`cxrnet.explain.faithfulness`) of the predicted class's probability through the whole model, as the
most salient pixels are removed or revealed (``curve_steps`` steps), and the area under each
(``deletion_auc``: lower is better; ``insertion_auc``: higher is better). ``curves=false`` skips them.

A sanity check after Adebayo et al. (2018), ``sanity=true`` (default): each method also explains a copy of
the model whose explained part has random weights (:func:`cxrnet.explain.sanity.randomised_copy`: encoder 2
and its heads for the CAMs, encoder 1 and the decoder for the native map), and ``randomised_rank_correlation``
is the mean Spearman correlation of the two maps per image: a map that explains the model, not the image,
correlates weakly (near 0). A flat map counts as 0 against a map that is not flat, 1 against a flat one
(:class:`cxrnet.explain.sanity.SanityResult`).

The data's ``image_size``, ``mean``, ``std`` and ``classes`` are taken from the checkpoint, so the maps are
computed on exactly the inputs the model was trained on; only the dataset has to be named.

With ``output_dir=<dir>`` the scores are also written to ``<dir>/explanations.json``, with two figures: a grid
of ``figure_items`` images with lesions (image, infection mask, each method's map: ``explanations.png``) and
the mean curves (``faithfulness.png``).

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
from omegaconf import DictConfig, open_dict
from rich import box
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Subset

from cxrnet.command import CONFIG_PATH, open_split, register_resolvers
from cxrnet.data.dataset import collate
from cxrnet.devices import autocast
from cxrnet.explain import EXPLAINERS, get_explainer
from cxrnet.explain.faithfulness import deletion_curve, insertion_curve
from cxrnet.explain.metrics import explanation_scores
from cxrnet.explain.sanity import randomised_copy, rank_agreement

log = logging.getLogger(__name__)

#: The scores' file in ``output_dir``, and the two figures beside it.
RESULTS_FILE = "explanations.json"
GRID_FIGURE = "explanations.png"
CURVES_FIGURE = "faithfulness.png"


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
    """Score each explanation method on the items of a split that have infection or lung masks.

    Args:
        cfg: a composed ``explain_evaluate.yaml`` config (``checkpoint``, ``data``, ``split``, ``methods``,
            ``output_dir``, ``batch_size``, ``k_percent``, ``tolerance``, ``device``).

    Returns:
        ``{"checkpoint", "data", "split", "classes", "counts", "methods"}`` where ``methods[name]`` maps each
        score key (``pointing_game``, ``average_precision``, ``infection_share``, ``top{k}_iou``,
        ``top{k}_f1``, ``lung_share``, ``deletion_auc``, ``insertion_auc``) to ``{"mean": float | None, "n": int}``,
        ``seconds_per_image`` and ``images_per_second`` to the explainer's wall time (maps only, not the
        curves), and ``deletion_curve`` / ``insertion_curve`` to the mean curves (with ``fractions`` at the
        top level). ``counts`` holds ``items`` (in the split), ``scored`` (items with either mask),
        ``with_infection_mask``, ``empty_infection_mask`` (both left out of the infection-based scores) and
        ``with_lung_mask``.
        The same dict is written as JSON to ``<cfg.output_dir>/explanations.json`` when ``output_dir`` is set.

    Raises:
        ValueError: no checkpoint, an unknown split or method, or a split with neither infection nor lung
            masks.
    """
    methods = list(cfg.methods)
    unknown = [name for name in methods if name not in EXPLAINERS]
    if unknown or not methods:
        raise ValueError(f"unknown explanation methods {unknown}; valid: {', '.join(EXPLAINERS)}")
    opened = open_split(cfg)
    net, device, precision, dataset = opened.net, opened.device, opened.precision, opened.dataset
    with open_dict(cfg):  # the config then records what was actually evaluated
        cfg.data = opened.data
    # Selected without reading pixels: Record and RawItem both say whether a mask exists. Items with only a
    # lung mask (e.g. cohen's hand-drawn lungs) still give the in-lung share, the curves and the sanity check.
    with_mask = [
        i
        for i, item in enumerate(dataset.items)
        if item.infection_mask is not None or item.lung_mask is not None
    ]
    with_infection = sum(dataset.items[i].infection_mask is not None for i in with_mask)
    if not with_mask:
        raise ValueError(
            f"{opened.name} ({len(dataset)} items) has neither infection nor lung masks; choose a dataset "
            "that provides them (e.g. synthetic, qata, covid_qu_ex for infection masks; cohen, montgomery, "
            "shenzhen for lung masks)"
        )
    if not with_infection:
        log.warning(
            "%s has lung masks but no infection masks: only the in-lung share, the curves and the sanity "
            "check are scored",
            opened.name,
        )
    loader = DataLoader(Subset(dataset, with_mask), batch_size=int(cfg.batch_size), collate_fn=collate)
    explainers = {name: get_explainer(name, net) for name in methods}
    randomised = {}
    if bool(cfg.get("sanity", True)):
        parts = {name: "explanation" if name == "native" else "classifier" for name in methods}
        copies = {part: randomised_copy(net, part, seed=0) for part in set(parts.values())}
        randomised = {name: get_explainer(name, copies[part]) for name, part in parts.items()}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
    seconds = dict.fromkeys(methods, 0.0)
    empty = with_lungs = 0
    k_percent = [float(k) for k in cfg.k_percent]
    curves, steps = bool(cfg.get("curves", True)), int(cfg.get("curve_steps", 20))
    sums: dict[str, dict[str, torch.Tensor]] = {name: {} for name in methods}
    fractions: torch.Tensor | None = None
    n_figure = int(cfg.get("figure_items", 6)) if cfg.get("output_dir") else 0
    shown: dict[str, list[np.ndarray]] = {"image": [], "infection": [], **{name: [] for name in methods}}
    titles: list[str] = []

    # first-call set-up (allocations, kernel choice) kept out of the timings
    with torch.no_grad(), autocast(precision, device):
        net(dataset[with_mask[0]]["image"][None].to(device))
    for batch in loader:
        images = batch["image"].to(device)
        infection = batch["infection_mask"][:, 0].numpy() > 0.5
        has_infection = batch["has_infection_mask"].numpy()
        infection &= has_infection[:, None, None]  # no reference: scored like an empty mask (NaN)
        lungs = batch["lung_mask"][:, 0].numpy() > 0.5
        has_lungs = batch["has_lung_mask"].numpy()
        empty += int((has_infection & ~infection.any(axis=(1, 2))).sum())
        with_lungs += int(has_lungs.sum())
        # rows of the figure: the first images with a lesion (any image, with its lungs, without infection masks)
        candidates = np.flatnonzero(infection.any(axis=(1, 2))) if with_infection else np.arange(len(images))
        keep = candidates[: max(0, n_figure - len(titles))].tolist()
        for i in keep:
            shown["image"].append(images[i, 0].float().cpu().numpy())
            shown["infection"].append(infection[i] if with_infection else lungs[i])
            titles.append(
                f"{batch['meta'][i].get('raw_label', '')} {Path(str(batch['meta'][i]['path'])).name}"
            )
        for name, explainer in explainers.items():
            start = time.perf_counter()
            with autocast(precision, device):
                maps = explainer(images).float()
            seconds[name] += time.perf_counter() - start
            faithful: dict[str, torch.Tensor] = {}
            if curves:
                with torch.no_grad(), autocast(precision, device):
                    for kind, curve in (("deletion", deletion_curve), ("insertion", insertion_curve)):
                        result = curve(net, images, maps, steps=steps, batch_size=int(cfg.batch_size) * 4)
                        faithful[kind] = result.auc
                        total = result.probabilities.float().sum(dim=0).cpu()
                        sums[name][kind] = sums[name].get(kind, 0) + total
                        fractions = result.fractions.cpu()
            maps_np = maps.cpu().numpy()
            rho = None
            if name in randomised:
                with autocast(precision, device):
                    other = randomised[name](images).float().cpu().numpy()
                rho = rank_agreement(maps_np, other).numpy()
            for i in keep:
                shown[name].append(maps_np[i])
            for i, saliency in enumerate(maps_np):
                lung = lungs[i] if has_lungs[i] else None
                scores = explanation_scores(
                    saliency, infection[i], lung, k_percent, tolerance=int(cfg.tolerance)
                )
                for kind, auc in faithful.items():
                    scores[f"{kind}_auc"] = float(auc[i])
                if rho is not None:
                    scores["randomised_rank_correlation"] = float(rho[i])
                rows[name].append(scores)

    results: dict[str, Any] = {
        "checkpoint": str(cfg.checkpoint),
        "data": str(cfg.data.name),
        "split": str(cfg.split),
        "precision": precision,
        "classes": list(opened.meta["classes"]),
        "counts": {
            "items": len(dataset),
            "scored": len(with_mask),
            "with_infection_mask": with_infection,
            "empty_infection_mask": empty,
            "with_lung_mask": with_lungs,
        },
        "methods": {
            name: {
                **_aggregate(rows[name]),
                "seconds_per_image": seconds[name] / len(with_mask),
                "images_per_second": len(with_mask) / seconds[name] if seconds[name] > 0 else None,
                **{f"{kind}_curve": (total / len(with_mask)).tolist() for kind, total in sums[name].items()},
            }
            for name in methods
        },
    }
    if fractions is not None:
        results["fractions"] = fractions.tolist()
    if cfg.get("output_dir"):
        folder = Path(cfg.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        log.info("explanation scores written to %s", folder / RESULTS_FILE)
        reference = "infection mask" if with_infection else "lung mask"
        _write_figures(folder, results, shown, titles, methods, reference)
    return results


def _write_figures(
    folder: Path,
    results: dict[str, Any],
    shown: dict[str, list[np.ndarray]],
    titles: list[str],
    methods: list[str],
    reference: str,
) -> None:
    from cxrnet.report.explanations import plot_explanation_grid, plot_faithfulness_curves

    if titles:
        maps = {name: shown[name] for name in methods}
        plot_explanation_grid(
            shown["image"], shown["infection"], maps, titles, folder / GRID_FIGURE, reference=reference
        )
    if "fractions" in results:
        scores = results["methods"]
        plot_faithfulness_curves(
            np.asarray(results["fractions"]),
            {name: np.asarray(scores[name]["deletion_curve"]) for name in methods},
            {name: np.asarray(scores[name]["insertion_curve"]) for name in methods},
            folder / CURVES_FIGURE,
        )


def results_table(results: dict[str, Any]) -> Table:
    """A rich table of :func:`evaluate_explanations` results: one row per method, one column per score."""
    first = next(iter(results["methods"].values()))
    topk = [key for key in first if key.startswith("top")]
    columns = [("pointing_game", "pointing"), ("average_precision", "AP")]
    columns += [(key, f"{key[3:].split('_')[0]}% {'IoU' if key.endswith('iou') else 'F1'}") for key in topk]
    columns += [("lung_share", "in lungs")]
    columns += [
        (key, title)
        for key, title in (("deletion_auc", "del. AUC"), ("insertion_auc", "ins. AUC"))
        if key in first
    ]
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
    table.add_column("images/s", justify="right")
    for name, scores in results["methods"].items():
        cells = []
        for key, _ in columns:
            mean = scores.get(key, {}).get("mean")
            cells.append("–" if mean is None else f"{mean:.3f}")
        n = scores["average_precision"]["n"]
        rate = scores.get("images_per_second")
        table.add_row(name, *cells, str(n), "–" if rate is None else f"{rate:.1f}")
    return table


def _run(cfg: DictConfig) -> None:
    results = evaluate_explanations(cfg)
    console = Console()
    if not console.is_terminal:  # a pipe or a log file: rich would squeeze the table into 80 columns
        console = Console(width=160)
    console.print(results_table(results))
    if not cfg.get("output_dir"):
        log.info("add output_dir=<dir> to save these scores in <dir>/%s", RESULTS_FILE)


def main() -> None:
    """Command-line entry point (Hydra): see ``conf/explain_evaluate.yaml``."""
    register_resolvers()
    hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="explain_evaluate")(_run)()


if __name__ == "__main__":
    main()
