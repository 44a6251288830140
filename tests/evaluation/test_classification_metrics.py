"""Classification metrics against scikit-learn and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn import metrics as skm

from cxrnet.evaluation.classification import (
    KEY_DOCS,
    auroc,
    average_precision,
    classification_metrics,
    confusion_matrix,
    covidnet_table,
    describe_key,
    sensitivity_at_specificity,
)

NAMES = ["covid19", "normal", "pneumonia"]


def _data(
    n: int = 400, n_classes: int = 3, seed: int = 0, rounding: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.2
    # Rounding the logits creates many tied scores, which is where ROC implementations differ.
    return y, softmax(np.round(logits, rounding), axis=1)


@pytest.fixture(scope="module")
def multiclass():
    y, p = _data()
    return y, p, classification_metrics(y, p, NAMES)


def test_accuracy_and_confusion_matrix_match_sklearn(multiclass):
    y, p, m = multiclass
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    np.testing.assert_array_equal(
        confusion_matrix(y, pred, 3), skm.confusion_matrix(y, pred, labels=[0, 1, 2])
    )
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_per_class_and_averaged_rates_match_sklearn(multiclass):
    y, p, m = multiclass
    pred = p.argmax(1)
    for ours, theirs in (
        ("sensitivity", skm.recall_score),
        ("ppv", skm.precision_score),
        ("f1", skm.f1_score),
    ):
        per_class = theirs(y, pred, average=None, labels=[0, 1, 2])
        for c, name in enumerate(NAMES):
            assert m[f"{name}/{ours}"] == pytest.approx(per_class[c])
        for avg in ("macro", "weighted"):
            assert m[f"{avg}/{ours}"] == pytest.approx(theirs(y, pred, average=avg))


def test_specificity_and_npv_from_confusion_matrix(multiclass):
    y, p, m = multiclass
    cm = skm.confusion_matrix(y, p.argmax(1))
    for c, name in enumerate(NAMES):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        assert m[f"{name}/specificity"] == pytest.approx(tn / (tn + fp))
        assert m[f"{name}/npv"] == pytest.approx(tn / (tn + fn))
        assert m[f"{name}/support"] == cm[c].sum()


def test_auroc_and_average_precision_match_sklearn_with_ties(multiclass):
    y, p, m = multiclass
    aucs = skm.roc_auc_score(y, p, multi_class="ovr", average=None)
    for c, name in enumerate(NAMES):
        assert m[f"{name}/auroc"] == pytest.approx(aucs[c], abs=1e-12)
        assert m[f"{name}/average_precision"] == pytest.approx(
            skm.average_precision_score(y == c, p[:, c]), abs=1e-12
        )
    for avg in ("macro", "weighted"):
        expected = skm.roc_auc_score(y, p, multi_class="ovr", average=avg)
        assert m[f"{avg}/auroc"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_heavily_tied_binary_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 4, 60) / 3.0 + 0.2 * y * rng.integers(0, 2, 60)
    if y.min() == y.max():
        pytest.skip("degenerate draw")
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("target", [0.80, 0.90, 0.95])
def test_sensitivity_at_specificity_against_sklearn_roc_curve(multiclass, target):
    y, p, m = multiclass
    for c in range(len(NAMES)):
        fpr, tpr, thr = skm.roc_curve(y == c, p[:, c], drop_intermediate=False)
        ok = 1 - fpr >= target - 1e-12
        best = np.flatnonzero(ok)[-1]
        sens, threshold = sensitivity_at_specificity(y == c, p[:, c], target)
        assert sens == pytest.approx(tpr[best])
        if np.isfinite(thr[best]):
            assert threshold == pytest.approx(thr[best])
        else:  # sklearn's "nothing positive" threshold is inf; ours is the next float above the top score
            assert threshold > p[:, c].max()
        # The returned threshold really is an operating point with that specificity and sensitivity.
        called = p[:, c] >= threshold
        assert called[y == c].mean() == pytest.approx(sens)
        assert (~called[y != c]).mean() >= target
    for c, name in enumerate(NAMES):
        key = f"{name}/sensitivity_at_specificity_0.90"
        assert m[key] == pytest.approx(sensitivity_at_specificity(y == c, p[:, c], 0.90)[0])


def test_sensitivity_at_specificity_exact_boundary():
    # 10 negatives: one false positive is exactly 90 % specificity and must be allowed.
    y = np.array([0] * 10 + [1] * 5)
    s = np.array([0.0] * 9 + [0.9] + [0.95, 0.8, 0.7, 0.6, 0.5])
    sens, thr = sensitivity_at_specificity(y, s, 0.90)
    assert sens == pytest.approx(1.0)
    assert thr == pytest.approx(0.5)
    sens, thr = sensitivity_at_specificity(y, s, 0.95)
    assert sens == pytest.approx(0.2)
    assert thr == pytest.approx(0.95)


def test_unreachable_specificity_gives_zero_sensitivity_and_finite_threshold():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.9, 0.1, 0.8, 0.7])  # the top score is a negative
    sens, thr = sensitivity_at_specificity(y, s, 1.0)
    assert sens == 0.0
    assert np.isfinite(thr) and thr > 0.9


def test_binary_case_matches_sklearn():
    y, p = _data(n=300, n_classes=2, seed=3)
    m = classification_metrics(y, p, ["negative", "covid19"])
    pred = p.argmax(1)
    assert m["covid19/sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert m["covid19/ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert m["covid19/f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["covid19/auroc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert m["covid19/average_precision"] == pytest.approx(skm.average_precision_score(y, p[:, 1]), abs=1e-12)
    # One-vs-rest in the binary case: the negative class's specificity is the positive's sensitivity.
    assert m["negative/specificity"] == pytest.approx(m["covid19/sensitivity"])


def test_absent_class_gives_nan_not_zero_or_crash():
    y, p = _data(n=200, seed=1)
    y = np.where(y == 2, 0, y)  # no pneumonia in this split
    m = classification_metrics(y, p, NAMES)
    for key in ("sensitivity", "auroc", "average_precision", "sensitivity_at_specificity_0.90"):
        assert math.isnan(m[f"pneumonia/{key}"]), key
    assert m["pneumonia/support"] == 0
    assert not math.isnan(m["pneumonia/specificity"])
    # Averages skip the undefined class, as sklearn with zero_division=np.nan does.
    pred = p.argmax(1)
    assert m["macro/sensitivity"] == pytest.approx(
        skm.recall_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=np.nan)
    )
    assert m["macro/auroc"] == pytest.approx(np.mean([m["covid19/auroc"], m["normal/auroc"]]))


def test_never_predicted_class_has_nan_ppv():
    y = np.array([0, 0, 1, 1, 2])
    p = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0], [0.6, 0.4, 0.0]])
    m = classification_metrics(y, p, NAMES)
    assert math.isnan(m["pneumonia/ppv"])
    assert m["pneumonia/sensitivity"] == 0.0
    assert m["pneumonia/f1"] == 0.0


def test_unlabelled_items_are_dropped_and_counted():
    y, p = _data(n=100, seed=2)
    y_missing = y.copy()
    y_missing[:10] = -1
    m = classification_metrics(y_missing, p, NAMES)
    ref = classification_metrics(y[10:], p[10:], NAMES)
    assert m["n"] == 90 and m["n_unlabelled"] == 10
    assert m["macro/auroc"] == pytest.approx(ref["macro/auroc"])


@pytest.mark.parametrize(
    ("y", "p", "names", "match"),
    [
        (np.array([0, 1]), np.ones((2, 2)) / 2, ["a"], "class names"),
        (np.array([0, 3]), np.ones((2, 3)) / 3, ["a", "b", "c"], "labels must lie"),
        (np.array([0]), np.ones((2, 2)) / 2, ["a", "b"], "y_true must have shape"),
        (np.array([0, 1]), np.array([[np.nan, 1], [0, 1]]), ["a", "b"], "NaN"),
        (np.array([0, 1]), np.ones((2, 2)) / 2, ["a", "a"], "unique"),
    ],
)
def test_bad_inputs_raise_helpful_errors(y, p, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p, names)


def test_every_key_is_documented(multiclass):
    _, _, m = multiclass
    for key in m:
        assert describe_key(key), key
    assert describe_key("covid19/auroc").startswith("area under")
    assert "covid19" in describe_key("covid19/sensitivity")
    assert len(KEY_DOCS) > 10


def test_covidnet_table():
    y, p = _data(n=150, seed=4)
    rows = covidnet_table(y, p, NAMES)
    pred = p.argmax(1)
    assert [r["class"] for r in rows] == NAMES
    np.testing.assert_allclose([r["sensitivity"] for r in rows], skm.recall_score(y, pred, average=None))
    np.testing.assert_allclose([r["ppv"] for r in rows], skm.precision_score(y, pred, average=None))
    assert sum(r["support"] for r in rows) == 150
