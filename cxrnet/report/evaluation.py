"""Figures and the Markdown / HTML report of an evaluation (``python -m cxrnet.evaluate``).

:func:`write_plots` draws every figure from a :class:`~cxrnet.evaluation.results.Collected`; :func:`build_report`
lays out the metrics, their intervals, the figures and the run's provenance with :mod:`.writer`. matplotlib is
imported only when figures are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from cxrnet.evaluation.bootstrap import CI
from cxrnet.evaluation.classification import confusion_matrix
from cxrnet.evaluation.results import MASKS, Collected
from cxrnet.evaluation.summary import CLASSIFICATION_HEADLINE, probabilities, severity_pairs
from cxrnet.leakage import NOT_CHECKED
from cxrnet.provenance import HEADS, head_training
from cxrnet.report.writer import Figure, Section, Table, format_value, write_report

NOTE = (
    "Research software, not a medical device: these results describe a model on one data set and must not "
    "be used for diagnosis or treatment decisions."
)


_SCALES = {"geographic_extent": "0-8", "brixia": "0-18", "infected_fraction": "0-1", "opacity": "0-6"}


#: The output of each mask kind, as :func:`cxrnet.provenance.untrained_outputs` names it.
MASK_OUTPUTS = {"lung": "lung_mask", "infection": "infection_map"}


def write_plots(
    collected: Collected,
    plot_dir: str | Path,
    temperature: float | None = None,
    untrained: Collection[str] = (),
) -> dict[str, Path]:
    """Write every figure of the evaluation into ``plot_dir``.

    Args:
        collected: the scored split.
        plot_dir: folder of the PNGs (created).
        temperature: T stored in the checkpoint, or ``None``.
        untrained: outputs of heads that saw no training target (:func:`cxrnet.provenance.untrained_outputs`);
            they are not drawn: no classification curves without a trained classifier, no severity scatter of
            an untrained route, no prediction of an untrained mask head in the segmentation grids.

    Returns:
        ``{name: path}`` with names ``roc``, ``pr``, ``confusion``, ``confusion_normalised``, ``reliability``
        (and ``reliability_uncalibrated`` with a temperature) when labels exist; ``severity_{route}_{reference}``
        for each severity pair with data; ``segmentation_best``, ``segmentation_worst`` and
        ``segmentation_worst_lesion`` (when it differs from the overall worst) when masks exist.
    """
    from cxrnet.report import plots  # matplotlib is imported only when figures are drawn

    c, plot_dir = collected, Path(plot_dir)
    written: dict[str, Path] = {}
    labelled = c.labels >= 0
    if labelled.any() and "probabilities" not in untrained:
        probs = probabilities(c, temperature or 1.0)
        written["roc"] = plots.plot_roc(c.labels, probs, c.classes, plot_dir / "roc.png")
        written["pr"] = plots.plot_pr(c.labels, probs, c.classes, plot_dir / "pr.png")
        cm = confusion_matrix(c.labels, probs.argmax(axis=1), len(c.classes))
        written["confusion"] = plots.plot_confusion(cm, c.classes, plot_dir / "confusion.png")
        written["confusion_normalised"] = plots.plot_confusion(
            cm, c.classes, plot_dir / "confusion_normalised.png", normalize=True
        )
        written["reliability"] = plots.plot_reliability(c.labels, probs, plot_dir / "reliability.png")
        if temperature is not None:
            written["reliability_uncalibrated"] = plots.plot_reliability(
                c.labels, softmax(c.logits, axis=1), plot_dir / "reliability_uncalibrated.png"
            )
    for key, (estimate, reference) in severity_pairs(c).items():
        if not (~np.isnan(estimate) & ~np.isnan(reference)).any():
            continue
        route, name = key.split("/")
        if _route_output(route, name) in untrained:
            continue
        unit = f" ({_SCALES[name]})" if name in _SCALES else ""
        what = "map-derived" if route == "map" else "learned (severity head)"
        written[f"severity_{route}_{name}"] = plots.plot_severity_scatter(
            estimate,
            reference,
            plot_dir / f"severity_{route}_{name}.png",
            xlabel=f"reference {name}{unit}",
            ylabel=f"{what} {name}{unit}",
        )
    masks = [m for m in MASKS if MASK_OUTPUTS[m] not in untrained]
    for kind, examples in c.examples.items():
        worst_overall = [id(e) for e in c.examples.get("worst", [])]
        if kind == "worst_lesion" and [id(e) for e in examples] == worst_overall:
            continue  # the worst images all have lesions: the same figure twice says nothing new
        if examples and masks:
            rows = [(m, e) for e in examples for m in masks]  # lung and infection side by side
            written[f"segmentation_{kind}"] = plots.plot_segmentation_grid(
                [e.image for _, e in rows],
                [e.masks[m][0] for m, e in rows],
                [e.masks[m][1] for m, e in rows],
                [e.dice[m] for m, e in rows],
                [f"{m}: {e.title}" for m, e in rows],
                plot_dir / f"segmentation_{kind}.png",
            )
    return written


def _route_output(route: str, reference: str) -> str:
    """The output a severity pair ``{route}/{reference}`` scores (``map`` or ``learned``)."""
    return "severity.from_maps" if route == "map" else f"severity.learned.{reference}"


_HEADLINE = (
    *CLASSIFICATION_HEADLINE,
    "macro/average_precision",
    "ece",
    "ece_uncalibrated",
    "brier",
    "temperature",
)


def _value(key: str, metrics: dict[str, Any], intervals: dict[str, CI]) -> Any:
    return intervals.get(key, metrics.get(key, math.nan))


def _data_section(c: Collected, run: dict[str, Any]) -> Section:
    data = run["data"]
    rows = []
    for index, name in [*enumerate(c.classes), (-1, "unlabelled")]:
        chosen = c.labels == index
        if index >= 0 or chosen.any():
            rows.append(
                {"class": name, "items": int(chosen.sum()), "patients": len(set(c.patient_ids[chosen]))}
            )
    rows.append({"class": "total", "items": len(c), "patients": len(set(c.patient_ids))})
    masks = ", ".join(f"{m} masks: {int(c.masks[m].has_reference.sum())}" for m in MASKS)
    text = (
        f"data={data.get('name')} (root: {data.get('root') or 'built in'}), split {run['split']}, sources: "
        f"{', '.join(run['sources']) or 'n/a'}; {len(c)} items of {len(set(c.patient_ids))} patients; {masks}. "
        f"Images scored at {data.get('image_size')} px, the checkpoint's input size."
    )
    return Section("Data", paragraphs=[text], tables=[Table(rows, caption="Items and patients per class")])


def _classification_section(
    c: Collected, metrics: dict[str, Any], ci: dict[str, CI], plots: dict[str, Path], level: str
) -> Section:
    def v(key: str) -> Any:
        return _value(f"cls/{key}", metrics, ci)

    headline = [{"metric": key, "value": v(key)} for key in _HEADLINE if f"cls/{key}" in metrics]
    covidnet = [
        {
            "class": n,
            "sensitivity": v(f"{n}/sensitivity"),
            "PPV": v(f"{n}/ppv"),
            "support": int(v(f"{n}/support")),
        }
        for n in c.classes
    ]
    columns = ("specificity", "npv", "f1", "auroc", "average_precision", "sensitivity_at_specificity_0.90")
    per_class = [{"class": n, **{col: v(f"{n}/{col}") for col in columns}} for n in c.classes]
    figures = [
        Figure(plots[name], caption)
        for name, caption in (
            ("roc", "One-vs-rest ROC curves; dots mark the best sensitivity at 90 % specificity."),
            ("pr", "Precision-recall curves; dotted lines give each class's prevalence (chance)."),
            ("confusion", "Confusion matrix (counts): rows are true classes, columns predictions."),
            (
                "confusion_normalised",
                "Confusion matrix normalised per true class: the diagonal is sensitivity.",
            ),
            (
                "reliability",
                "Reliability of the reported probabilities: bars on the diagonal are calibrated.",
            ),
            ("reliability_uncalibrated", "Reliability before temperature scaling, for comparison."),
        )
        if name in plots
    ]
    return Section(
        "Classification",
        paragraphs=[
            f"Arg-max of softmax(logits / T). Values with {level} patient-bootstrap intervals in parentheses; n/a "
            "marks a value that is undefined on these data (e.g. a class without positives)."
        ],
        tables=[
            Table(headline, caption="Headline metrics"),
            Table(covidnet, caption="Per-class sensitivity and PPV (the table COVID-Net reports)"),
            Table(per_class, caption="More per-class metrics (one-vs-rest)"),
        ],
        figures=figures,
    )


def _segmentation_section(
    metrics: dict[str, Any], ci: dict[str, CI], plots: dict[str, Path], untrained: Collection[str] = ()
) -> Section:
    rows = []
    for mask, prefix in (
        ("lung", "lung"),
        ("infection", "infection"),
        ("infection, lesions only", "infection"),
    ):
        if MASK_OUTPUTS[prefix] in untrained:
            continue
        nonempty = mask.endswith("only")
        n = metrics["infection/nonempty/n"] if nonempty else metrics[f"{prefix}/n"]
        if not n:
            continue
        dice_key = "infection/nonempty/dice/mean" if nonempty else f"{prefix}/dice/mean"
        row: dict[str, Any] = {"mask": mask, "n": int(n), "Dice (mean)": _value(dice_key, metrics, ci)}
        if not nonempty:
            row |= {
                "Dice (pooled)": _value(f"{prefix}/dice/pooled", metrics, ci),
                "IoU (mean)": _value(f"{prefix}/iou/mean", metrics, ci),
                "HD95 px (median)": metrics[f"{prefix}/hd95/median"],
                "HD95 undefined": int(metrics[f"{prefix}/hd95/n_undefined"]),
            }
        rows.append(row)
    paragraphs = [
        "Scored at the model's input resolution against the letterboxed reference masks; HD95 in pixels."
    ]
    if "infection_map" not in untrained:
        fp_rate = metrics["infection/empty/false_positive_rate"]
        paragraphs[0] += (
            f" Infection predicted on images whose reference is empty: {format_value(fp_rate)} of them."
        )
    for prefix, output in MASK_OUTPUTS.items():
        if output in untrained:
            paragraphs.append(f"The {prefix} head saw no training targets: its scores are withheld.")
    shown = " and ".join(m for m in MASKS if MASK_OUTPUTS[m] not in untrained)
    figures = [
        Figure(plots[k], c)
        for k, c in (
            ("segmentation_best", f"Best segmentations (reference green, prediction red; {shown})."),
            ("segmentation_worst", "Worst segmentations overall, for error analysis."),
            ("segmentation_worst_lesion", "Worst segmentations among images with a lesion in the reference."),
        )
        if k in plots
    ]
    return Section("Segmentation", paragraphs, [Table(rows, caption="Lung and infection masks")], figures)


def _severity_section(
    metrics: dict[str, Any], ci: dict[str, CI], plots: dict[str, Path], untrained: Collection[str] = ()
) -> Section:
    rows = []
    pairs = {k.rsplit("/", 1)[0] for k in metrics if k.startswith("severity/")}
    for key in sorted(pairs, key=lambda k: (not k.startswith("severity/map/"), k)):  # map-derived first
        _, route, reference = key.split("/")
        if _route_output(route, reference) in untrained:
            continue
        rows.append(
            {
                "estimate": "map-derived" if route == "map" else "learned (head)",
                "reference": reference,
                "n": int(metrics[f"{key}/n"]),
                "MAE": _value(f"{key}/mae", metrics, ci),
                "bias": metrics[f"{key}/bias"],
                "Pearson r": _value(f"{key}/pearson_r", metrics, ci),
                "Spearman rho": _value(f"{key}/spearman_rho", metrics, ci),
            }
        )
    figures = [
        Figure(path, _severity_caption(name)) for name, path in plots.items() if name.startswith("severity_")
    ]
    text = (
        "Map-derived scores come from the predicted lung and infection maps (cxrnet.severity, no training of "
        "their own); learned scores from the severity head."
    )
    withheld = sorted(_describe_output(o) for o in untrained if o.startswith("severity."))
    if withheld:
        text += f" Withheld because their heads saw no training targets: {', '.join(withheld)}."
    tables = [Table(rows, caption="Agreement with reference scores")] if rows else []
    return Section("Severity", [text], tables, figures)


_OUTPUT_NAMES = {
    "lung_mask": "lung mask",
    "infection_map": "infection map",
    "explanation": "explanation map",
    "probabilities": "class probabilities",
    "severity.from_maps": "map-derived severity",
}


def _describe_output(output: str) -> str:
    if output.startswith("severity.learned."):
        return f"learned {output.rsplit('.', 1)[1]}"
    return _OUTPUT_NAMES.get(output, output)


def _heads_section(run: dict[str, Any]) -> Section:
    """Which heads saw training targets, from which sources; which outputs are withheld and why."""
    info = run.get("heads") or {}
    training = info.get("training")
    if training is None:
        text = (
            "The checkpoint does not record which heads saw training targets (it predates that record); every "
            "head is assumed trained."
        )
        return Section("Heads and their training data", paragraphs=[text])
    rows = []
    for name in [*HEADS, *(f"severity/{t}" for t in info.get("severity_targets", []))]:
        head = head_training(training, name)
        status = "trained" if head.trained else "untrained: scores withheld"
        if head.synthetic_only:
            status = "trained on synthetic phantoms only"
        sources = ", ".join(f"{s} {n}" for s, n in head.sources.items()) or "none"
        rows.append({"head": name, "training items": head.n, "sources": sources, "status": status})
    paragraphs = [
        f"Outputs withheld: {', '.join(_describe_output(o) for o in info['untrained'])}."
        if info.get("untrained")
        else "Every head saw training targets."
    ]
    return Section(
        "Heads and their training data", paragraphs, [Table(rows, caption="Training targets per head")]
    )


def _severity_caption(plot_name: str) -> str:
    _, route, reference = plot_name.split("_", 2)
    what = "Map-derived" if route == "map" else "Learned (severity head)"
    return f"{what} {reference.replace('_', ' ')} against the reference score; dashed: identity."


def _explanation_section(metrics: dict[str, Any], ci: dict[str, CI]) -> Section:
    rows = [
        {"score": k.split("/", 1)[1], "mean": _value(k, metrics, ci)}
        for k in metrics
        if k.startswith("explanation/") and k != "explanation/n"
    ]
    text = (
        f"The native explanation map scored against the reference infection masks of {int(metrics['explanation/n'])} "
        "images with a lesion (lung_share: share of explanation mass inside the reference lung mask)."
    )
    return Section("Explanations", [text], [Table(rows, caption="Explanation quality")])


def build_report(
    out_dir: Path,
    collected: Collected,
    metrics: dict[str, Any],
    intervals: dict[str, CI],
    plots: dict[str, Path],
    run: dict[str, Any],
) -> tuple[Path, Path]:
    """Write ``report.md`` and the self-contained ``report.html`` of an evaluation."""
    c, leakage = collected, run["leakage"]
    untrained = set((run.get("heads") or {}).get("untrained", []))
    level = f"{float(run['bootstrap']['confidence']):.0%}".replace("%", " %")
    notes = [NOTE, *(f"Caveat: {caveat}." for caveat in run.get("caveats", []))]
    sections = [Section("Note", paragraphs=notes), _data_section(c, run), _heads_section(run)]
    sections.append(Section("Training-data overlap (leakage)", paragraphs=[_leakage_text(leakage)]))
    if (c.labels >= 0).any() and "probabilities" not in untrained:
        sections.append(_classification_section(c, metrics, intervals, plots, level))
    masks_scored = [m for m in MASKS if MASK_OUTPUTS[m] not in untrained]
    if any(metrics[f"{m}/n"] for m in MASKS) and masks_scored:
        sections.append(_segmentation_section(metrics, intervals, plots, untrained))
    if any(k.startswith("severity/") for k in metrics):
        sections.append(_severity_section(metrics, intervals, plots, untrained))
    explained = metrics["explanation/n"] or "explanation/lung_share" in metrics
    if explained and "explanation" not in untrained:
        sections.append(_explanation_section(metrics, intervals))
    model = run["model"]
    metadata = {
        "checkpoint": run["checkpoint"],
        "training config SHA-256": run["checkpoint_config_sha256"] or "n/a (no config stored)",
        "model": f"{model.get('encoder')} + {model.get('decoder')}",
        "classes": ", ".join(c.classes),
        "temperature": run["temperature"] if run["temperature"] is not None else "none",
        "data": f"{run['data'].get('name')} ({run['data'].get('root') or 'built in'})",
        "split": f"{run['split']} ({len(c)} items, {len(set(c.patient_ids))} patients)",
        "leakage check": leakage["summary"] if leakage["checked"] else "not checked",
        "bootstrap": f"{metrics['bootstrap/n_resamples']} patient-level resamples, {level} percentile intervals",
        "command": run["command"],
        "date": run["date"],
        **{f"version: {k}": v for k, v in run["software"].items()},
    }
    return write_report(out_dir, title="cxrnet evaluation", sections=sections, metadata=metadata)


def _leakage_text(leakage: dict[str, Any]) -> str:
    if not leakage["checked"]:
        return "Warning: " + NOT_CHECKED
    if leakage["allowed"]:
        return (
            "WARNING: this split overlaps the training data and was evaluated only because allow_leakage=true; "
            f"the metrics are optimistic. {leakage['summary']}."
        )
    return f"Passed: {leakage['summary']}."
