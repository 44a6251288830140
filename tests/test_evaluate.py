"""``python -m cxrnet.evaluate``: metrics, intervals, figures and report of a tiny checkpoint on phantoms."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig, OmegaConf

from cxrnet.checkpoint import save_checkpoint
from cxrnet.command import data_config
from cxrnet.data.records import Record
from cxrnet.data.splits import image_hash
from cxrnet.data.synthetic import synthetic_splits
from cxrnet.data.transforms import Preprocessing
from cxrnet.evaluate import evaluate, to_json, training_caveats
from cxrnet.evaluation.summary import describe_metric
from cxrnet.leakage import LeakageError, fingerprint, training_fingerprint
from cxrnet.models import create_model
from cxrnet.provenance import SYNTHETIC_CAVEAT, training_heads

CLASSES = ["normal", "bacterial", "viral", "covid19"]
DATA_SEED = 7  # stored in the checkpoint's config; evaluate must split the data with it
DATA = ["data=synthetic", "data.options.n_train=8", "data.options.n_val=8", "data.options.n_test=16"]
PLOTS = {
    "roc",
    "pr",
    "confusion",
    "confusion_normalised",
    "reliability",
    "severity_map_geographic_extent",
    "severity_map_brixia",
    "severity_learned_geographic_extent",
    "severity_learned_brixia",
    "segmentation_best",
    "segmentation_worst",
}


def tiny_checkpoint(path: Path, **extra: Any) -> Path:
    """A random-init CXRNet at 64 px with both severity targets, saved as a cxrnet checkpoint."""
    torch.manual_seed(0)
    net = create_model(
        classes=CLASSES,
        encoder="tu-mobilenetv3_small_100",
        decoder_channels=[32, 24, 16, 16, 8],
        severity_targets=["geographic_extent", "brixia"],
        severity_scales={"geographic_extent": 8, "brixia": 18},
    )
    config = OmegaConf.to_yaml(OmegaConf.create({"seed": DATA_SEED, "data": {"seed": DATA_SEED}}))
    return save_checkpoint(path, net, Preprocessing(image_size=64), extra={"config": config, **extra})


def compose_evaluate(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(config_name="evaluate", overrides=[*DATA, *overrides])


def phantom_test_split() -> list[Any]:
    return synthetic_splits(n_train=8, n_val=8, n_test=16, size=64, seed=DATA_SEED)["test"]


def test_data_config_takes_size_normalisation_classes_and_seed_from_the_checkpoint() -> None:
    cfg = compose_evaluate("checkpoint=x.ckpt", "output_dir=out", "data.image_size=256")
    meta = {
        "classes": ["normal", "covid19"],
        "severity_targets": ["opacity"],
        "preprocessing": {"image_size": 96, "mean": 0.4, "std": 0.2},
        "config": "data:\n  seed: 11\n",
    }
    data = data_config(cfg, meta)
    assert (data.image_size, data.mean, data.std, data.seed) == (96, 0.4, 0.2, 11)
    assert list(data.classes) == ["normal", "covid19"]
    assert {"opacity", "geographic_extent", "brixia"} <= set(data.severity_targets)
    assert data_config(compose_evaluate("checkpoint=x", "output_dir=o", "seed=3"), meta).seed == 3


def test_a_dataset_on_disk_without_its_root_is_named_clearly() -> None:
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(
            config_name="evaluate", overrides=["checkpoint=x.ckpt", "output_dir=out", "data=covidx"]
        )
    meta = {"classes": CLASSES, "preprocessing": {"image_size": 64, "mean": 0.5, "std": 0.25}}
    with pytest.raises(ValueError, match=r"data=covidx needs data\.root="):
        data_config(cfg, meta)


def test_to_json_writes_null_for_undefined_values() -> None:
    content = to_json(
        {"a": float("nan"), "b": [np.float32(1.5), math.inf], "c": np.int64(2), "d": np.bool_(True)}
    )
    assert json.dumps(content, allow_nan=False) == '{"a": null, "b": [1.5, null], "c": 2, "d": true}'


def test_refuses_a_split_sharing_a_patient_with_training(tmp_path: Path) -> None:
    shared = str(phantom_test_split()[2].meta["patient_id"])
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", training_data=fingerprint([shared], [np.zeros((64, 64))]))
    cfg = compose_evaluate(f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(LeakageError, match=rf"{shared}.*allow_leakage=true"):
        evaluate(cfg)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_refuses_a_near_duplicate_image_under_another_patient_id(tmp_path: Path) -> None:
    item = phantom_test_split()[9]
    copy = np.kron(item.image**0.8, np.ones((2, 2), np.float32))  # re-published larger, other contrast
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", training_data=fingerprint(["another-patient"], [copy]))
    assert image_hash(copy) != image_hash(item.image)
    cfg = compose_evaluate(f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}")
    with pytest.raises(LeakageError, match=re.escape(str(item.meta["path"]))):
        evaluate(cfg)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], Path]:
    """One evaluation with allow_leakage=true of a checkpoint trained 'on' one test patient."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("evaluate")
    test = phantom_test_split()
    training = training_fingerprint(
        synthetic_splits(n_train=8, n_val=0, n_test=0, size=64, seed=DATA_SEED)["train"]
    )
    training["patient_ids"].append(str(test[0].meta["patient_id"]))
    ckpt = tiny_checkpoint(root / "model.ckpt", training_data=training)
    cfg = compose_evaluate(
        f"checkpoint={ckpt}", f"output_dir={root / 'out'}", "bootstrap.n_resamples=40", "allow_leakage=true"
    )
    return root / "out", evaluate(cfg), ckpt


def _strict_json(path: Path) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_writes_every_output_file(evaluated: tuple[Path, dict[str, Any], Path]) -> None:
    out, _, _ = evaluated
    for name in ("metrics.json", "metrics_ci.json", "run.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    written = {p.stem for p in (out / "plots").glob("*.png")}
    assert PLOTS <= written <= PLOTS | {"segmentation_worst_lesion"}
    for png in (out / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png.name


@pytest.mark.slow
def test_metrics_json_is_strict_json_with_documented_task_keys(
    evaluated: tuple[Path, dict[str, Any], Path],
) -> None:
    out, returned, _ = evaluated
    metrics = _strict_json(out / "metrics.json")
    assert set(metrics) == set(returned)
    expected = [
        "n_items",
        "cls/accuracy",
        "cls/macro/f1",
        "cls/covid19/sensitivity",
        "cls/covid19/ppv",
        "cls/covid19/auroc",
        "cls/covid19/sensitivity_at_specificity_0.90",
        "cls/confusion/covid19/normal",
        "cls/ece",
        "cls/brier",
        "lung/dice/mean",
        "lung/dice/pooled",
        "lung/hd95/mean",
        "infection/iou/mean",
        "infection/nonempty/dice/mean",
        "severity/map/geographic_extent/mae",
        "severity/map/brixia/pearson_r",
        "severity/learned/brixia/spearman_rho",
        "explanation/pointing_game",
        "explanation/lung_share",
        "leakage/checked",
        "bootstrap/n_resamples",
    ]
    assert not [k for k in expected if k not in metrics]
    assert "cls/ece_uncalibrated" not in metrics  # only with a stored temperature
    assert not [k for k in metrics if not describe_metric(k)], "every key is documented"
    assert metrics["n_items"] == 16 and metrics["lung/n"] == 16 and metrics["infection/nonempty/n"] == 12
    assert sum(v for k, v in metrics.items() if k.startswith("cls/confusion/")) == 16
    assert 0 <= metrics["lung/dice/mean"] <= 1 and metrics["cls/temperature"] == 1.0


@pytest.mark.slow
def test_intervals_cover_the_headline_metrics(evaluated: tuple[Path, dict[str, Any], Path]) -> None:
    out, metrics, _ = evaluated
    ci = _strict_json(out / "metrics_ci.json")
    assert ci["n_resamples"] == 40 == metrics["bootstrap/n_resamples"] and ci["resampling_unit"] == "patient"
    for key in ("cls/accuracy", "cls/macro/auroc", "cls/covid19/specificity", "cls/ece", "lung/dice/mean"):
        interval = ci["intervals"][key]
        assert interval["low"] <= interval["high"] and interval["n_groups"] == 16, key
    assert "severity/map/brixia/mae" in ci["intervals"]
    assert not [k for k in ci["intervals"] if k.endswith(("/n", "/support"))], "no intervals on counts"


@pytest.mark.slow
def test_report_is_self_contained_and_names_its_provenance(
    evaluated: tuple[Path, dict[str, Any], Path],
) -> None:
    out, _, ckpt = evaluated
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    run = _strict_json(out / "run.json")
    assert html.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png")))
    assert not re.search(r'src="(?!data:)', html), "the HTML links nothing outside itself"
    for link in re.findall(r"\]\((plots/[^)]+)\)", md):
        assert (out / link).is_file(), link
    assert len(run["checkpoint_config_sha256"]) == 64
    for text in (html, md):
        assert run["checkpoint_config_sha256"] in text and str(ckpt) in text
        assert "not a medical device" in text and "torch" in text and "timm" in text
        assert "(" in text and "\u2013" in text  # intervals are shown as "0.912 (0.880–0.940)"


@pytest.mark.slow
def test_overlap_allowed_by_override_is_recorded(evaluated: tuple[Path, dict[str, Any], Path]) -> None:
    out, metrics, _ = evaluated
    shared = str(phantom_test_split()[0].meta["patient_id"])
    assert metrics["leakage/checked"] and metrics["leakage/allowed"]
    assert metrics["leakage/shared_patients"] == 1
    assert _strict_json(out / "run.json")["leakage"]["shared_patients"] == [shared]
    assert "allow_leakage=true" in (out / "report.md").read_text().replace("\\_", "_")


@pytest.mark.slow
def test_without_training_data_the_report_warns_that_leakage_was_not_checked(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt")
    out = tmp_path / "out"
    cfg = compose_evaluate(
        f"checkpoint={ckpt}", f"output_dir={out}", "bootstrap.n_resamples=0", "report.n_examples=0"
    )
    metrics = evaluate(cfg)
    assert metrics["leakage/checked"] is False and metrics["bootstrap/n_resamples"] == 0
    assert _strict_json(out / "metrics_ci.json")["intervals"] == {}
    assert "could not be checked" in (out / "report.html").read_text()
    assert not (out / "plots" / "segmentation_best.png").exists()


@pytest.mark.slow
def test_an_older_checkpoint_scores_every_head(evaluated: tuple[Path, dict[str, Any], Path]) -> None:
    out, metrics, _ = evaluated
    assert metrics["heads/recorded"] is False and metrics["heads/infection/trained"] is True
    assert math.isnan(metrics["heads/infection/n_train"])
    assert 0 <= metrics["infection/dice/mean"] <= 1 and not math.isnan(metrics["severity/map/brixia/mae"])
    assert _strict_json(out / "run.json")["heads"]["untrained"] == []
    assert "predates that record" in (out / "report.md").read_text()


def lung_only_heads() -> dict[str, Any]:
    """A model trained on Cohen-like records: lung masks, labels and extent scores, no infection masks."""
    records = [
        Record(
            f"/c/{i}.png",
            f"p{i}",
            "cohen",
            label="covid19",
            lung_mask=("m.png",),
            severity={"geographic_extent": 2},
        )
        for i in range(6)
    ]
    return training_heads(records, CLASSES, ["geographic_extent", "brixia"])


@pytest.mark.slow
def test_metrics_of_an_untrained_infection_head_are_withheld(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", heads=lung_only_heads())
    out = tmp_path / "out"
    cfg = compose_evaluate(f"checkpoint={ckpt}", f"output_dir={out}", "bootstrap.n_resamples=20")
    metrics = evaluate(cfg)
    stored = _strict_json(out / "metrics.json")
    assert stored["heads/recorded"] is True and stored["heads/infection/trained"] is False
    assert stored["heads/infection/n_train"] == 0 and stored["heads/lung/n_train"] == 6
    # Data counts stay; every score of the untrained head, and the severity derived from it, is null.
    assert stored["infection/n"] == 16 and stored["infection/nonempty/n"] == 12
    for key in (
        "infection/dice/mean",
        "infection/nonempty/dice/mean",
        "infection/empty/false_positive_rate",
        "severity/map/brixia/mae",
        "severity/map/geographic_extent/pearson_r",
        "severity/learned/brixia/mae",
    ):
        assert stored[key] is None and math.isnan(metrics[key]), key
    assert 0 <= stored["lung/dice/mean"] <= 1 and stored["severity/learned/geographic_extent/mae"] is not None
    assert not [k for k in stored if not describe_metric(k)], "every key is documented"
    intervals = _strict_json(out / "metrics_ci.json")["intervals"]
    assert "lung/dice/mean" in intervals
    assert not [
        k for k in intervals if k.startswith(("infection/", "severity/map/", "severity/learned/brixia/"))
    ]
    plots = {p.stem for p in (out / "plots").glob("*.png")}
    assert "severity_learned_geographic_extent" in plots and "segmentation_best" in plots
    assert not {"severity_map_brixia", "severity_map_geographic_extent", "severity_learned_brixia"} & plots
    run = _strict_json(out / "run.json")
    assert run["heads"]["untrained"] == ["infection_map", "severity.from_maps", "severity.learned.brixia"]
    assert run["caveats"] == []  # phantom test data: nothing to caution about
    report = (out / "report.md").read_text().replace("\\_", "_")
    assert "Heads and their training data" in report and "untrained: scores withheld" in report
    assert "infection head saw no training targets" in report


def test_a_phantom_only_model_evaluated_on_real_data_carries_the_caveat() -> None:
    meta = {"heads": None, "training_data": {"source": ["synthetic"]}}
    assert training_caveats(meta, SimpleNamespace(sources=["cohen", "synthetic"])) == [SYNTHETIC_CAVEAT]
    assert training_caveats(meta, SimpleNamespace(sources=["synthetic"])) == []
    assert (
        training_caveats({"training_data": {"source": ["cohen"]}}, SimpleNamespace(sources=["cohen"])) == []
    )
