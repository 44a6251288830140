"""Patient-level bootstrap: coverage, resampling unit, NaN handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr

from cxrnet.evaluation.bootstrap import CI, bootstrap_ci, group_bootstrap_indices
from cxrnet.evaluation.classification import auroc

MU = 0.7
N_PATIENTS = 60
N_AUROC_PATIENTS = 80
N_REPETITIONS = 200
N_RESAMPLES = 300


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def _clustered_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Items of N_PATIENTS patients (1-5 each) sharing a patient effect: strongly correlated within a patient."""
    sizes = rng.integers(1, 6, N_PATIENTS)
    groups = np.repeat(np.arange(N_PATIENTS), sizes)
    patient_effect = rng.normal(scale=2.0, size=N_PATIENTS)
    values = MU + patient_effect[groups] + rng.normal(size=groups.size)
    return values, groups


def _coverage(item_level: bool) -> float:
    hits = 0
    for rep in range(N_REPETITIONS):
        values, groups = _clustered_sample(np.random.default_rng(1000 + rep))
        unit = np.arange(values.size) if item_level else groups
        ci = bootstrap_ci(_mean, {"x": values}, unit, n_resamples=N_RESAMPLES, seed=rep)
        hits += ci.low <= MU <= ci.high
    return hits / N_REPETITIONS


def test_patient_bootstrap_covers_truth_at_nominal_rate():
    coverage = _coverage(item_level=False)
    assert 0.88 <= coverage <= 0.99, coverage


def test_patient_bootstrap_covers_true_auroc_of_binormal_model():
    # Patient label y, scores d*y + patient effect + item noise: AUROC = Phi(d / sqrt(2 (sb^2 + se^2))).
    d, sb, se = 1.5, 1.0, 0.5
    truth = float(ndtr(d / np.sqrt(2 * (sb**2 + se**2))))
    hits = 0
    for rep in range(N_REPETITIONS):
        rng = np.random.default_rng(5000 + rep)
        sizes = rng.integers(1, 5, N_AUROC_PATIENTS)
        groups = np.repeat(np.arange(sizes.size), sizes)
        label = (rng.uniform(size=sizes.size) < 0.4).astype(int)
        effect = rng.normal(scale=sb, size=sizes.size)
        y = label[groups]
        s = d * y + effect[groups] + rng.normal(scale=se, size=groups.size)
        ci = bootstrap_ci(auroc, {"y_true": y, "scores": s}, groups, n_resamples=N_RESAMPLES, seed=rep)
        hits += ci.low <= truth <= ci.high
    assert 0.88 <= hits / N_REPETITIONS <= 0.99, hits / N_REPETITIONS


def test_item_level_resampling_would_undercover_clustered_data():
    # The reason for resampling patients: treating correlated items as independent gives too-narrow intervals.
    assert _coverage(item_level=True) < 0.85


def test_width_reflects_patients_not_items():
    rng = np.random.default_rng(0)
    per_patient = rng.normal(size=20)
    items_per_patient = 50
    values = np.repeat(per_patient, items_per_patient)
    groups = np.repeat(np.arange(20), items_per_patient)
    grouped = bootstrap_ci(_mean, {"x": values}, groups, n_resamples=2000, seed=1)
    one_each = bootstrap_ci(_mean, {"x": per_patient}, np.arange(20), n_resamples=2000, seed=1)
    items = bootstrap_ci(_mean, {"x": values}, np.arange(values.size), n_resamples=2000, seed=1)
    width = grouped.high - grouped.low
    assert grouped.n_groups == 20
    assert width == pytest.approx(one_each.high - one_each.low, rel=0.15)
    # Item resampling would pretend to have 1000 independent values: about sqrt(50) ~ 7 times narrower.
    assert width > 4 * (items.high - items.low)


def test_resamples_contain_whole_patients():
    groups = np.array(["p3", "p1", "p3", "p2", "p1", "p3"])
    for idx in group_bootstrap_indices(groups, n_resamples=50, seed=0):
        drawn, counts = np.unique(groups[idx], return_counts=True)
        sizes = {"p1": 2, "p2": 1, "p3": 3}
        assert all(c % sizes[g] == 0 for g, c in zip(drawn, counts))
        assert sum(c // sizes[g] for g, c in zip(drawn, counts)) == 3  # as many patients as there are


def test_dict_metrics_get_one_interval_per_key_and_nan_resamples_are_dropped():
    # One positive patient among 30: many resamples have no positive, so AUROC is NaN there.
    rng = np.random.default_rng(3)
    y = np.zeros(60, int)
    y[:2] = 1
    groups = np.repeat(np.arange(30), 2)
    s = rng.normal(size=60) + y

    def metrics(y: np.ndarray, s: np.ndarray) -> dict[str, float]:
        return {"auroc": auroc(y, s), "mean_score": float(s.mean()), "per_item": s}

    out = bootstrap_ci(metrics, {"y": y, "s": s}, groups, n_resamples=200, seed=0)
    assert set(out) == {"auroc", "mean_score"}
    assert out["auroc"].n_dropped > 0
    assert out["auroc"].n_dropped + out["auroc"].n_resamples == 200
    assert out["mean_score"].n_dropped == 0
    assert out["mean_score"].low <= out["mean_score"].estimate <= out["mean_score"].high


def test_reproducible_and_formats():
    rng = np.random.default_rng(0)
    x, g = rng.normal(size=100), rng.integers(0, 30, 100)
    a = bootstrap_ci(_mean, {"x": x}, g, n_resamples=100, seed=5)
    b = bootstrap_ci(_mean, {"x": x}, g, n_resamples=100, seed=5)
    assert a == b
    ci = CI(estimate=0.9123, low=0.88, high=0.94, n_resamples=1000, n_groups=10)
    assert str(ci) == "0.912 (0.880\u20130.940)"
    assert CI(math.nan, math.nan, math.nan, 0, 1).format() == "n/a"


def test_ragged_lists_are_resampled_with_their_items():
    masks = [np.ones((2, 2)), np.ones((3, 3)), np.ones((4, 4))]
    ci = bootstrap_ci(lambda m: float(np.mean([x.sum() for x in m])), {"m": masks}, np.arange(3), 50)
    assert ci.estimate == pytest.approx(29 / 3)
    assert 4 <= ci.low <= ci.high <= 16


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="items but groups"):
        bootstrap_ci(_mean, {"x": np.zeros(5)}, np.arange(4))
