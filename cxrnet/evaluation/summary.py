"""Metrics and patient-bootstrap intervals of an evaluation, from a :class:`~.results.Collected`.

All keys are flat and prefixed by task; :data:`METRIC_DOCS` says what each one means. Undefined values are
NaN here (``null`` in ``metrics.json``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import softmax

from cxrnet.evaluation.bootstrap import CI, bootstrap_ci
from cxrnet.evaluation.calibration import apply_temperature, brier_score, expected_calibration_error
from cxrnet.evaluation.classification import classification_metrics, confusion_matrix, describe_key
from cxrnet.evaluation.correlation import agreement
from cxrnet.evaluation.results import MASKS, Collected, MaskScores

#: Meaning of every ``metrics.json`` key. ``{a,b}``: one of the choices (severity ``map``: derived from the
#: predicted maps, ``learned``: the severity head); ``{name}``: one key segment, e.g. ``{class}`` a class name,
#: ``{reference}`` a reference severity score of the data (``geographic_extent``, ``brixia``, ...).
METRIC_DOCS: dict[str, str] = {
    "n_items": "items in the evaluated split",
    "n_patients": "distinct patient ids in the evaluated split",
    "cls/{key}": "classification_metrics key {key} (accuracy, {class}/sensitivity, macro/auroc, ...) on the "
    "reported probabilities; see cxrnet.evaluation.KEY_DOCS",
    "cls/confusion/{true}/{predicted}": "items of true class {true} whose arg-max class is {predicted}",
    "cls/temperature": "temperature T applied to the logits (1.0 when the checkpoint has none)",
    "cls/ece": "top-label expected calibration error (15 bins) of softmax(logits / T)",
    "cls/ece_uncalibrated": "ECE of softmax(logits) before temperature scaling (only when T is stored)",
    "cls/brier": "multiclass Brier score of softmax(logits / T), 0-2",
    "{lung,infection}/n": "items with a reference mask of this kind",
    "{lung,infection}/n_empty_target": "of those, items whose reference mask is empty",
    "{lung,infection}/{dice,iou}/{mean,median}": "per-image Dice / IoU aggregated over items with a reference "
    "(two empty masks score 1)",
    "{lung,infection}/{dice,iou}/pooled": "Dice / IoU of all pixels of all images pooled (micro average)",
    "{lung,infection}/hd95/{mean,median}": "95th-percentile Hausdorff distance in pixels at model resolution, over "
    "images where both masks are non-empty or both empty",
    "{lung,infection}/hd95/n_undefined": "images where exactly one of the two masks is empty (HD95 undefined)",
    "infection/nonempty/n": "items whose reference infection mask is non-empty",
    "infection/nonempty/{dice,iou}/mean": "mean Dice / IoU over items with a non-empty infection reference",
    "infection/empty/false_positive_rate": "share of items with an empty infection reference where some "
    "infection is predicted",
    "severity/{map,learned}/{reference}/n": "items with both the estimate and the reference score",
    "severity/{map,learned}/{reference}/mae": "mean absolute difference, in the reference's unit",
    "severity/{map,learned}/{reference}/bias": "mean of estimate minus reference",
    "severity/{map,learned}/{reference}/{pearson_r,spearman_rho}": "Pearson / Spearman correlation (NaN below 3 "
    "pairs or for a constant input)",
    "explanation/n": "items with a non-empty reference infection mask (the explanation scores' domain)",
    "explanation/{score}": "mean of cxrnet.explain.explanation_scores {score} of the native explanation map "
    "against the infection (lung_share: against the lung) reference",
    "leakage/checked": "whether the checkpoint recorded its training data so overlap could be checked",
    "leakage/images_checked": "whether image hashes were compared too (not only patient ids)",
    "leakage/{shared_patients,near_duplicate_images}": "evaluation patients / images also in training",
    "leakage/near_duplicate_pairs": "pairs of an evaluation and a training image within max_distance bits",
    "leakage/max_distance": "pHash Hamming distance (bits of 256) up to which images count as duplicates",
    "leakage/allowed": "evaluation ran despite overlap because allow_leakage=true",
    "bootstrap/n_resamples": "patient-level bootstrap resamples behind metrics_ci.json",
    "heads/recorded": "whether the checkpoint records which heads saw training targets (older ones do not: "
    "every head is then assumed trained)",
    "heads/{lung,infection,cls}/trained": "whether this head saw training targets; the metrics of an untrained "
    "head are null",
    "heads/{lung,infection,cls}/n_train": "training items with a target for this head",
    "heads/severity/{target}/{trained,n_train}": "the same for one learned severity target",
}

#: Metric keys withheld (set to NaN, ``null`` in metrics.json) for each untrained output of
#: :func:`cxrnet.provenance.untrained_outputs`; ``severity.learned.<target>`` withholds ``severity/learned/<target>/``.
WITHHELD_PREFIXES: dict[str, str] = {
    "lung_mask": "lung/",
    "infection_map": "infection/",
    "probabilities": "cls/",
    "explanation": "explanation/",
    "severity.from_maps": "severity/map/",
}
#: Keys that count the evaluated data, not the model's output: kept for untrained heads too.
_DATA_COUNTS = ("/n", "/n_empty_target", "/support", "cls/temperature")

SPECIFICITY_TARGETS = (0.90, 0.95)
#: The classification metrics a summary leads with (keys under ``cls/``).
CLASSIFICATION_HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "macro/sensitivity",
    "macro/specificity",
    "macro/f1",
    "macro/auroc",
)
_PER_CLASS_HEADLINE = ("sensitivity", "specificity", "ppv", "auroc")
_SEVERITY_HEADLINE = ("mae", "pearson_r", "spearman_rho")


def _pattern(template: str) -> re.Pattern[str]:
    """``"{lung,infection}/{dice,iou}/mean"`` → a regex: ``{a,b}`` is one of the choices, ``{name}`` one key segment."""
    parts = re.split(r"(\{[^}]*\})", template)
    regex = "".join(
        ("(" + "|".join(map(re.escape, p[1:-1].split(","))) + ")" if "," in p else "[^/]+")
        if p.startswith("{")
        else re.escape(p)
        for p in parts
    )
    return re.compile(regex)


def describe_metric(key: str) -> str:
    """The meaning of a ``metrics.json`` key, from :data:`METRIC_DOCS` (``""`` if the key is unknown)."""
    if key.startswith("cls/") and describe_key(key[4:]):
        return describe_key(key[4:])
    for template, doc in METRIC_DOCS.items():
        if template != "cls/{key}" and _pattern(template).fullmatch(key):
            return doc
    return ""


def withheld(key: str, untrained: Collection[str]) -> bool:
    """Whether metric ``key`` scores an output in ``untrained`` (names of :data:`cxrnet.provenance.OUTPUTS`).

    Counts of the evaluated data (``lung/n``, ``cls/covid19/support``, ...) are never withheld.
    """
    if key.endswith(_DATA_COUNTS):
        return False
    for output in untrained:
        if output.startswith("severity.learned."):
            prefix = f"severity/learned/{output.rsplit('.', 1)[1]}/"
        else:
            prefix = WITHHELD_PREFIXES.get(output, "")
        if prefix and key.startswith(prefix):
            return True
    return False


def withhold_untrained(metrics: Mapping[str, Any], untrained: Collection[str]) -> dict[str, Any]:
    """``metrics`` with every value of an untrained output set to NaN (``null`` in metrics.json).

    The keys stay, so that tables and benchmarks keep their columns, but no number of a head that never
    learned is reported as if it meant something; ``heads/*`` keys say why.
    """
    return {k: float("nan") if withheld(k, untrained) else v for k, v in metrics.items()}


def probabilities(collected: Collected, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities ``softmax(logits / T)`` as float64 (N, C)."""
    return apply_temperature(collected.logits, temperature)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _nanmedian(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def _mask_metrics(s: MaskScores, prefix: str) -> dict[str, float]:
    has = s.has_reference
    out = {f"{prefix}/n": float(has.sum()), f"{prefix}/n_empty_target": float(s.reference_empty.sum())}
    for name in ("dice", "iou", "hd95"):
        values = np.where(has, getattr(s, name), np.nan)
        out[f"{prefix}/{name}/mean"] = _nanmean(values)
        out[f"{prefix}/{name}/median"] = _nanmedian(values)
    pred, ref, inter = s.predicted[has].sum(), s.reference[has].sum(), s.intersection[has].sum()
    all_empty = has.any() and pred + ref == 0
    out[f"{prefix}/dice/pooled"] = 1.0 if all_empty else _ratio(2 * inter, pred + ref)
    out[f"{prefix}/iou/pooled"] = 1.0 if all_empty else _ratio(inter, s.union[has].sum())
    out[f"{prefix}/hd95/n_undefined"] = float((has & np.isnan(s.hd95)).sum())
    return out


def _infection_extra(s: MaskScores) -> dict[str, float]:
    nonempty = s.has_reference & (s.reference > 0)
    empty = s.reference_empty
    return {
        "infection/nonempty/n": float(nonempty.sum()),
        "infection/nonempty/dice/mean": _nanmean(np.where(nonempty, s.dice, np.nan)),
        "infection/nonempty/iou/mean": _nanmean(np.where(nonempty, s.iou, np.nan)),
        "infection/empty/false_positive_rate": _ratio((empty & (s.predicted > 0)).sum(), empty.sum()),
    }


def severity_pairs(collected: Collected) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"{route}/{reference}": (estimate, reference)}`` for each estimate whose reference the data provides."""
    pairs = {}
    for route, estimates in (("map", collected.severity_map), ("learned", collected.severity_learned)):
        for name, estimate in estimates.items():
            reference = collected.severity_reference.get(name)
            # A score the data never provides is not applicable rather than undefined: no keys for it.
            if reference is not None and not np.isnan(reference).all():
                pairs[f"{route}/{name}"] = (estimate, reference)
    return pairs


def _classification(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], headline: bool
) -> dict[str, float]:
    targets = () if headline else SPECIFICITY_TARGETS
    metrics = classification_metrics(y, probs, classes, specificity_targets=targets)
    out = {f"cls/{k}": v for k, v in metrics.items()}
    out["cls/ece"] = expected_calibration_error(y, probs)
    out["cls/brier"] = brier_score(y, probs)
    if headline:
        keep = {*CLASSIFICATION_HEADLINE, *(f"{c}/{m}" for c in classes for m in _PER_CLASS_HEADLINE), "ece", "brier"}
        out = {k: v for k, v in out.items() if k[4:] in keep}
    return out


def _segmentation(collected: Collected) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in MASKS:
        out |= _mask_metrics(collected.masks[m], m)
    return out | _infection_extra(collected.masks["infection"])


def compute_metrics(collected: Collected, temperature: float | None = None) -> dict[str, float]:
    """Every point estimate of ``metrics.json`` (without leakage and bootstrap bookkeeping).

    Args:
        collected: the scored split.
        temperature: T stored in the checkpoint, or ``None``; probabilities are ``softmax(logits / T)``.

    Returns:
        Flat ``{key: float}`` (NaN where undefined), keys as in :data:`METRIC_DOCS`.
    """
    c = collected
    out: dict[str, float] = {"n_items": float(len(c)), "n_patients": float(np.unique(c.patient_ids).size)}
    probs = probabilities(c, temperature or 1.0)
    out |= _classification(c.labels, probs, c.classes, headline=False)
    cm = confusion_matrix(c.labels, probs.argmax(axis=1) if len(c) else np.zeros(0, int), len(c.classes))
    for i, true in enumerate(c.classes):
        for j, pred in enumerate(c.classes):
            out[f"cls/confusion/{true}/{pred}"] = float(cm[i, j])
    out["cls/temperature"] = float(temperature or 1.0)
    if temperature is not None:
        out["cls/ece_uncalibrated"] = expected_calibration_error(c.labels, softmax(c.logits, axis=1))
    out |= _segmentation(c)
    for key, (estimate, reference) in severity_pairs(c).items():
        out |= {f"severity/{key}/{k}": v for k, v in agreement(estimate, reference).items()}
    out |= _explanation(c.explanation, c.masks["infection"])
    return out


def _explanation(scores: Mapping[str, np.ndarray], infection: MaskScores) -> dict[str, float]:
    out = {"explanation/n": float((infection.has_reference & (infection.reference > 0)).sum())}
    return out | {f"explanation/{name}": _nanmean(values) for name, values in scores.items()}


def _with_nan_warnings_silenced(fn: Any) -> Any:
    def wrapped(**data: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # resamples without any item of a kind
            return fn(**data)

    return wrapped


def confidence_intervals(
    collected: Collected,
    temperature: float | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, CI]:
    """Patient-level bootstrap intervals of the headline metrics.

    Headline metrics: accuracy, balanced accuracy, macro sensitivity / specificity / F1 / AUROC, each class's
    sensitivity / specificity / PPV / AUROC, ECE and Brier; lung and infection Dice and IoU (mean and
    pooled) and the non-empty infection Dice; MAE and correlations of every severity pair; the mean
    explanation scores.

    Returns:
        ``{metrics.json key: CI}``; keys whose estimate is undefined are left out.
    """
    c = collected
    groups = c.patient_ids
    if not len(c) or n_resamples < 1:
        return {}
    common = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    out: dict[str, CI] = {}
    if (c.labels >= 0).any():
        probs = probabilities(c, temperature or 1.0)

        def cls_fn(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
            return _classification(y, probs, c.classes, headline=True)

        out |= bootstrap_ci(
            _with_nan_warnings_silenced(cls_fn), {"y": c.labels, "probs": probs}, groups, **common
        )
    seg_data = {f"{m}/{f}": getattr(c.masks[m], f) for m in MASKS for f in _MASK_FIELDS}
    seg_data |= {f"{m}/has": c.masks[m].has_reference for m in MASKS}
    if any(c.masks[m].has_reference.any() for m in MASKS):
        out |= bootstrap_ci(_with_nan_warnings_silenced(_segmentation_headline), seg_data, groups, **common)
    pairs = severity_pairs(c)
    if pairs:
        sev_data = {f"{k}/estimate": e for k, (e, _) in pairs.items()} | {
            f"{k}/reference": r for k, (_, r) in pairs.items()
        }
        out |= bootstrap_ci(_with_nan_warnings_silenced(_severity_headline), sev_data, groups, **common)
    if c.explanation:
        out |= bootstrap_ci(
            _with_nan_warnings_silenced(_explanation_headline), dict(c.explanation), groups, **common
        )
    return {k: v for k, v in out.items() if not np.isnan(v.estimate)}


_MASK_FIELDS = ("dice", "iou", "intersection", "predicted", "reference")


def _segmentation_headline(**data: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in MASKS:
        has = data[f"{m}/has"]
        out[f"{m}/dice/mean"] = _nanmean(np.where(has, data[f"{m}/dice"], np.nan))
        out[f"{m}/iou/mean"] = _nanmean(np.where(has, data[f"{m}/iou"], np.nan))
        pred, ref = data[f"{m}/predicted"][has].sum(), data[f"{m}/reference"][has].sum()
        inter = data[f"{m}/intersection"][has].sum()
        out[f"{m}/dice/pooled"] = 1.0 if has.any() and pred + ref == 0 else _ratio(2 * inter, pred + ref)
    nonempty = data["infection/has"] & (data["infection/reference"] > 0)
    out["infection/nonempty/dice/mean"] = _nanmean(np.where(nonempty, data["infection/dice"], np.nan))
    return out


def _severity_headline(**data: np.ndarray) -> dict[str, float]:
    out = {}
    for key in dict.fromkeys(k.rsplit("/", 1)[0] for k in data):  # ordered: a set's order changes per process
        stats = agreement(data[f"{key}/estimate"], data[f"{key}/reference"])
        out |= {f"severity/{key}/{s}": stats[s] for s in _SEVERITY_HEADLINE}
    return out


def _explanation_headline(**scores: np.ndarray) -> dict[str, float]:
    return {f"explanation/{name}": _nanmean(values) for name, values in scores.items()}
