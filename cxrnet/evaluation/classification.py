"""Classification metrics on numpy arrays: confusion matrix, per-class rates, ROC/PR curves, operating points.

Every function here is pure and takes the test split as plain arrays:

- ``y_true``: int array (N,), class index in ``[0, C)``, or ``-1`` for an item without a label. Unlabelled items
  are dropped (and counted under ``n_unlabelled``), never treated as a class.
- ``probs``: float array (N, C), one column per class in the order of ``class_names``. The predicted class is
  the arg-max of a row. Rows need not sum to one (sigmoid outputs work), but curves use each column as the
  one-vs-rest score of its class.

A value that is undefined on the data at hand (a class with no positives has no sensitivity and no AUROC) is
NaN, never 0 and never an exception, so that a bootstrap can drop it and a report can show it as such.
ROC and precision-recall curves break ties in the score exactly as scikit-learn does (one curve point per
distinct score), so AUROC and average precision agree with ``sklearn.metrics`` to floating-point precision.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Specificities at which the sensitivity of each class is reported (Deep-COVID reports ~90 %).
DEFAULT_SPECIFICITY_TARGETS: tuple[float, ...] = (0.90, 0.95)

#: What each key of :func:`classification_metrics` means. ``{class}`` is a class name, ``{avg}`` is
#: ``macro`` or ``weighted`` and ``{target}`` a specificity target written with two decimals.
KEY_DOCS: dict[str, str] = {
    "n": "number of labelled items evaluated",
    "n_unlabelled": "items whose label is absent (-1); excluded from every metric",
    "accuracy": "fraction of labelled items whose arg-max class equals the true class",
    "balanced_accuracy": "mean over classes of sensitivity (classes without positives are skipped)",
    "{class}/support": "number of items whose true class is {class}",
    "{class}/sensitivity": "recall of {class}: TP / (TP + FN); NaN without positives",
    "{class}/specificity": "TN / (TN + FP), one-vs-rest; NaN without negatives",
    "{class}/ppv": "precision (positive predictive value): TP / (TP + FP); NaN if never predicted",
    "{class}/npv": "negative predictive value: TN / (TN + FN); NaN if always predicted",
    "{class}/f1": "2 TP / (2 TP + FP + FN); NaN if the class is neither present nor predicted",
    "{class}/auroc": "area under the one-vs-rest ROC curve of the {class} probability; NaN without positives "
    "or negatives",
    "{class}/average_precision": "area under the one-vs-rest precision-recall curve (step-wise, as "
    "scikit-learn); NaN without positives",
    "{class}/sensitivity_at_specificity_{target}": "highest sensitivity on the one-vs-rest ROC curve whose "
    "specificity is >= {target}",
    "{class}/threshold_at_specificity_{target}": "probability threshold giving that operating point (predict "
    "{class} when its probability >= threshold)",
    "{avg}/{metric}": "macro: unweighted mean over classes; weighted: mean weighted by support. Classes where "
    "the metric is NaN are left out of both averages; NaN if no class has a value",
}

_AVERAGED_METRICS = (
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "f1",
    "auroc",
    "average_precision",
)


def check_labels_and_probs(
    y_true: np.ndarray, probs: np.ndarray, n_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate labels and probabilities and drop unlabelled items.

    Args:
        y_true: int (N,), class index or -1 for absent.
        probs: float (N, C) class scores.
        n_classes: expected C (``len(class_names)``), or ``None`` to accept the width of ``probs``.

    Returns:
        ``(y, p, n_unlabelled)``: int64 (M,) labels, float64 (M, C) scores of the M labelled items, and N - M.

    Raises:
        ValueError: on mismatched shapes, out-of-range labels or non-finite scores.
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be NxC, got shape {probs.shape}; for a binary score stack [1-p, p]")
    if y_true.ndim != 1 or y_true.shape[0] != probs.shape[0]:
        raise ValueError(f"y_true must have shape ({probs.shape[0]},) to match probs, got {y_true.shape}")
    if n_classes is not None and probs.shape[1] != n_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but {n_classes} class names were given")
    non_integer = y_true.size and not np.issubdtype(y_true.dtype, np.integer)
    if non_integer and not np.all(np.equal(np.mod(y_true, 1), 0)):
        raise ValueError("y_true must hold integer class indices (or -1 for absent)")
    y_true = y_true.astype(np.int64)
    n_cls = probs.shape[1]
    bad = (y_true < -1) | (y_true >= n_cls)
    if bad.any():
        raise ValueError(f"labels must lie in [0, {n_cls}) or be -1 (absent); found {np.unique(y_true[bad])}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")
    labelled = y_true >= 0
    return y_true[labelled], probs[labelled], int((~labelled).sum())


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is zero (the rate is undefined, not zero)."""
    return float(num) / float(den) if den > 0 else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count (true, predicted) pairs.

    Args:
        y_true: int (N,) true classes in ``[0, n_classes)``; items with -1 are ignored.
        y_pred: int (N,) predicted classes in ``[0, n_classes)``.
        n_classes: C.

    Returns:
        int64 (C, C); rows are true classes, columns predicted classes.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    keep = y_true >= 0
    y_true, y_pred = y_true[keep], y_pred[keep]
    if np.any(y_true >= n_classes) or np.any((y_pred < 0) | (y_pred >= n_classes)):
        raise ValueError(f"class indices must lie in [0, {n_classes})")
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def binary_clf_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positive counts at every distinct score, highest first (scikit-learn's tie rule).

    Args:
        y_true: bool or {0,1} (N,), positive class indicator.
        scores: float (N,), higher means more likely positive.

    Returns:
        ``(fps, tps, thresholds)``, each (K,) for the K distinct scores in decreasing order: calling an item
        positive when ``score >= thresholds[k]`` gives ``fps[k]`` false and ``tps[k]`` true positives.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    # A stable sort of the negated score keeps tied items together and in input order, as sklearn does.
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), y.size - 1] if y.size else np.zeros(0, dtype=np.int64)
    tps = np.cumsum(y, dtype=np.float64)[last_of_run]
    fps = (last_of_run + 1) - tps
    return fps, tps, s[last_of_run]


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of one binary problem, every distinct score kept.

    Args:
        y_true: bool or {0,1} (N,).
        scores: float (N,).

    Returns:
        ``(fpr, tpr, thresholds)`` each (K+1,), starting at (0, 0). ``thresholds[0]`` is just above the highest
        score (nothing called positive) and is finite so that it survives JSON. Rates are NaN when the data
        has no negatives (fpr) or no positives (tpr).
    """
    fps, tps, thr = binary_clf_curve(y_true, scores)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    top = np.nextafter(thr[0], np.inf) if thr.size else np.inf
    thresholds = np.r_[top, thr]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thresholds


def precision_recall_curve(
    y_true: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score, in decreasing score order.

    Args:
        y_true: bool or {0,1} (N,).
        scores: float (N,).

    Returns:
        ``(precision, recall, thresholds)`` each (K,). Recall is NaN everywhere when there are no positives.
    """
    fps, tps, thr = binary_clf_curve(y_true, scores)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every distinct score
    recall = tps / tps[-1] if tps.size and tps[-1] > 0 else np.full_like(tps, np.nan)
    return precision, recall, thr


#: Slack when comparing a specificity with its target, so that e.g. 9 of 10 negatives (0.9 exactly) meets a
#: 0.90 target despite floating-point rounding.
_SPECIFICITY_TOLERANCE = 1e-12


def _check_targets(targets: Sequence[float]) -> None:
    for target in targets:
        if not 0.0 < target <= 1.0:
            raise ValueError(f"specificity target must lie in (0, 1], got {target}")


def _ranking_metrics(
    y_true: np.ndarray, scores: np.ndarray, targets: Sequence[float]
) -> tuple[float, float, dict[float, tuple[float, float]]]:
    """AUROC, average precision and operating points from one sort of the scores (bootstraps call this a lot)."""
    fps, tps, thr = binary_clf_curve(y_true, scores)
    n_pos = tps[-1] if tps.size else 0.0
    n_neg = fps[-1] if fps.size else 0.0
    nan = float("nan")
    auc, ap = nan, nan
    points = dict.fromkeys(targets, (nan, nan))
    if n_pos > 0:
        recall = tps / n_pos
        ap = float(np.sum(np.diff(np.r_[0.0, recall]) * tps / (tps + fps)))
    if n_pos > 0 and n_neg > 0:
        fpr, tpr = np.r_[0.0, fps] / n_neg, np.r_[0.0, tps] / n_pos
        # Trapezoids written out rather than np.trapezoid, which numpy < 2 lacks; ties become diagonal steps.
        auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)
        thresholds = np.r_[np.nextafter(thr[0], np.inf), thr]
        for target in targets:
            # fpr never decreases, so the admissible points form a prefix, and tpr is highest at its end.
            k = np.flatnonzero(1.0 - fpr >= target - _SPECIFICITY_TOLERANCE)[-1]
            points[target] = (float(tpr[k]), float(thresholds[k]))
    return auc, ap, points


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal, so ties score one half); NaN without positives or negatives.

    Args:
        y_true: bool or {0,1} (N,).
        scores: float (N,).
    """
    return _ranking_metrics(y_true, scores, ())[0]


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Step-wise area under the precision-recall curve, ``sum_k (R_k - R_{k-1}) P_k``; NaN without positives.

    Args:
        y_true: bool or {0,1} (N,).
        scores: float (N,).
    """
    return _ranking_metrics(y_true, scores, ())[1]


def sensitivity_at_specificity(y_true: np.ndarray, scores: np.ndarray, target: float) -> tuple[float, float]:
    """Operating point on the ROC curve: the best sensitivity whose specificity reaches ``target``.

    Args:
        y_true: bool or {0,1} (N,).
        scores: float (N,).
        target: required specificity in (0, 1].

    Returns:
        ``(sensitivity, threshold)``; predicting positive when ``score >= threshold`` reaches it on these data.
        The threshold is just above the top score when only "nothing positive" reaches the target. Both NaN
        without positives or negatives.
    """
    _check_targets([target])
    return _ranking_metrics(y_true, scores, [target])[2][target]


def _nan_average(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean over the entries that are defined (and have positive weight); NaN if none are."""
    keep = ~np.isnan(values)
    if weights is not None:
        keep &= weights > 0
    if not keep.any():
        return float("nan")
    return float(np.average(values[keep], weights=None if weights is None else weights[keep]))


def _target_tag(target: float) -> str:
    return f"{target:.2f}"


def classification_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    *,
    specificity_targets: Sequence[float] = DEFAULT_SPECIFICITY_TARGETS,
) -> dict[str, float]:
    """All classification metrics of a test split as one flat dict (keys documented in :data:`KEY_DOCS`).

    Args:
        y_true: int (N,), class index or -1 when the item has no label.
        probs: float (N, C) class probabilities, columns in the order of ``class_names``.
        class_names: C names; they become key prefixes, so they must be unique and contain no ``/``.
        specificity_targets: specificities at which the one-vs-rest sensitivity and threshold are reported.

    Returns:
        Flat ``{key: float}``; e.g. ``accuracy``, ``covid19/sensitivity``, ``macro/auroc``,
        ``covid19/sensitivity_at_specificity_0.90``. Undefined values are NaN.
    """
    names = list(class_names)
    _check_targets(specificity_targets)
    if len(set(names)) != len(names) or any("/" in n for n in names):
        raise ValueError(f"class names must be unique and contain no '/': {names}")
    if {"macro", "weighted"} & set(names):
        raise ValueError("'macro' and 'weighted' are reserved key prefixes and cannot be class names")
    y, p, n_unlabelled = check_labels_and_probs(y_true, probs, len(names))
    n_cls = len(names)
    cm = confusion_matrix(y, p.argmax(axis=1), n_cls)
    n = int(cm.sum())
    out: dict[str, float] = {
        "n": float(n),
        "n_unlabelled": float(n_unlabelled),
        "accuracy": _ratio(np.trace(cm), n),
    }
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    fn, fp = support - tp, predicted - tp
    tn = n - tp - fn - fp
    per_class: dict[str, np.ndarray] = {m: np.full(n_cls, np.nan) for m in _AVERAGED_METRICS}
    at_spec: dict[float, np.ndarray] = {t: np.full(n_cls, np.nan) for t in specificity_targets}
    for c, name in enumerate(names):
        positive = y == c
        per_class["sensitivity"][c] = _ratio(tp[c], tp[c] + fn[c])
        per_class["specificity"][c] = _ratio(tn[c], tn[c] + fp[c])
        per_class["ppv"][c] = _ratio(tp[c], tp[c] + fp[c])
        per_class["npv"][c] = _ratio(tn[c], tn[c] + fn[c])
        per_class["f1"][c] = _ratio(2 * tp[c], 2 * tp[c] + fp[c] + fn[c])
        auc, ap, points = _ranking_metrics(positive, p[:, c], specificity_targets)
        per_class["auroc"][c] = auc
        per_class["average_precision"][c] = ap
        out[f"{name}/support"] = float(support[c])
        for metric in _AVERAGED_METRICS:
            out[f"{name}/{metric}"] = float(per_class[metric][c])
        for target in specificity_targets:
            sens, thr = points[target]
            at_spec[target][c] = sens
            out[f"{name}/sensitivity_at_specificity_{_target_tag(target)}"] = sens
            out[f"{name}/threshold_at_specificity_{_target_tag(target)}"] = thr
    out["balanced_accuracy"] = _nan_average(per_class["sensitivity"])
    averaged = dict(per_class)
    averaged.update({f"sensitivity_at_specificity_{_target_tag(t)}": v for t, v in at_spec.items()})
    for metric, values in averaged.items():
        out[f"macro/{metric}"] = _nan_average(values)
        out[f"weighted/{metric}"] = _nan_average(values, weights=support)
    return out


def describe_key(key: str) -> str:
    """The :data:`KEY_DOCS` description of a concrete metric key, or ``""`` if the key is unknown.

    Example: ``describe_key("covid19/sensitivity_at_specificity_0.90")``.
    """
    if key.split("/", 1)[0] in ("macro", "weighted") and "/" in key:
        return KEY_DOCS["{avg}/{metric}"]
    for pattern, doc in KEY_DOCS.items():
        if pattern.startswith("{avg}"):
            continue
        regex = re.escape(pattern).replace(r"\{class\}", "(?P<cls>[^/]+)")
        regex = regex.replace(r"\{target\}", "(?P<target>[0-9.]+)")
        match = re.fullmatch(regex, key)
        if match:
            found = match.groupdict()
            if "cls" in found:
                doc = doc.replace("{class}", found["cls"])
            if "target" in found:
                doc = doc.replace("{target}", found["target"])
            return doc
    return ""


def covidnet_table(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-class sensitivity and PPV of the arg-max prediction, the table COVID-Net reports.

    Args:
        y_true: int (N,), -1 for absent.
        probs: float (N, C).
        class_names: C names.

    Returns:
        One row per class: ``{"class": str, "sensitivity": float, "ppv": float, "support": int}``, ready for
        :class:`cxrnet.report.Table`.
    """
    metrics = classification_metrics(y_true, probs, class_names, specificity_targets=())
    return [
        {
            "class": name,
            "sensitivity": metrics[f"{name}/sensitivity"],
            "ppv": metrics[f"{name}/ppv"],
            "support": int(metrics[f"{name}/support"]),
        }
        for name in class_names
    ]
