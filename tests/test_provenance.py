"""What each head was trained on: the record built from train items, read back, and stored by training."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig

from cxrnet.checkpoint import save_checkpoint
from cxrnet.data.dataset import drop_labels
from cxrnet.data.records import RawItem, Record
from cxrnet.data.synthetic import synthetic_splits
from cxrnet.data.transforms import Preprocessing
from cxrnet.provenance import (
    SYNTHETIC_CAVEAT,
    caveats,
    head_training,
    inherit_heads,
    synthetic_only,
    training_heads,
    untrained_outputs,
)
from cxrnet.train import build_module

CLASSES = ["normal", "covid19"]
TARGETS = ["geographic_extent", "brixia"]


def cohen_like(n: int = 5) -> list[Record]:
    """Records as the Cohen reader gives them: lung masks, labels, some extent scores, no infection masks."""
    return [
        Record(
            path=f"/data/cohen/{i}.png",
            patient_id=f"p{i}",
            source="cohen",
            label="covid19" if i else "normal",
            lung_mask=(f"/data/cohen/masks/{i}.png",),
            severity={"geographic_extent": 3.0} if i % 2 else {"geographic_extent": math.nan},
        )
        for i in range(n)
    ]


def test_a_dataset_without_infection_masks_leaves_the_infection_head_untrained() -> None:
    heads = training_heads(cohen_like(5), CLASSES, TARGETS)
    assert json.loads(json.dumps(heads)) == heads, "the record must be JSON-ready"
    assert heads["n_items"] == 5 and heads["sources"] == {"cohen": 5}
    assert heads["lung"] == {"n": 5, "sources": {"cohen": 5}}
    assert heads["infection"] == {"n": 0, "sources": {}, "n_empty": 0}
    assert heads["cls"]["n"] == 5 and heads["cls"]["classes"] == {"normal": 1, "covid19": 4}
    # NaN is no score: only the two odd items count.
    assert heads["severity"]["geographic_extent"] == {"n": 2, "sources": {"cohen": 2}}
    assert heads["severity"]["brixia"] == {"n": 0, "sources": {}}
    assert untrained_outputs(heads, TARGETS) == {
        "infection_map",
        "severity.from_maps",
        "severity.learned.brixia",
    }
    infection = head_training(heads, "infection")
    assert infection.recorded and not infection.trained and infection.n == 0
    lung = head_training(heads, "lung")
    assert lung.trained and lung.real and not lung.synthetic_only
    assert caveats(heads, None, TARGETS) == [] and not synthetic_only(heads)


def test_infection_masks_known_to_be_empty_count_but_do_not_train_the_head() -> None:
    normals = [
        Record(f"/d/{i}.png", f"p{i}", "qata", label="normal", meta={"infection_mask_empty": True})
        for i in range(3)
    ]
    heads = training_heads(normals, CLASSES)
    assert heads["infection"]["n"] == 3 and heads["infection"]["n_empty"] == 3
    assert not head_training(heads, "infection").trained  # it never saw what infection looks like
    lesion = Record("/d/x.png", "px", "qata", label="covid19", infection_mask="/d/x_mask.png")
    assert head_training(training_heads([*normals, lesion], CLASSES), "infection").trained


def test_phantoms_are_synthetic_and_partial_labels_are_counted_per_head() -> None:
    items = synthetic_splits(n_train=8, n_val=0, n_test=0, size=32, classes=CLASSES)["train"]
    items[0] = drop_labels(items[0], masks=True)  # label only
    items[1] = drop_labels(items[1], label=True)  # masks only
    heads = training_heads(items, CLASSES, TARGETS)
    assert heads["sources"] == {"synthetic": 8}
    assert heads["lung"]["n"] == 7 and heads["cls"]["n"] == 7
    assert 0 < heads["infection"]["n_empty"] < heads["infection"]["n"] == 7  # normals have empty masks
    assert untrained_outputs(heads, TARGETS) == frozenset()
    assert synthetic_only(heads) and caveats(heads) == [SYNTHETIC_CAVEAT]
    assert head_training(heads, "severity/brixia").synthetic_only


def test_mixed_training_names_the_heads_trained_on_phantoms_only() -> None:
    phantom = RawItem(
        image=np.zeros((8, 8), np.float32),
        infection_mask=np.eye(8, dtype=bool),
        meta={"source": "synthetic", "patient_id": "s0", "path": "s0"},
    )
    heads = training_heads([*cohen_like(3), phantom], CLASSES, TARGETS)
    assert not synthetic_only(heads)
    assert head_training(heads, "infection").synthetic_only
    assert caveats(heads, None, TARGETS) == ["infection head trained on synthetic phantoms only"]


def test_older_checkpoints_assume_every_head_trained() -> None:
    head = head_training(None, "infection")
    assert head.trained and not head.recorded and head.n is None
    assert not head.synthetic_only and not head.real
    assert untrained_outputs(None, TARGETS) == frozenset() and caveats(None) == []
    # Without a heads record, the leakage fingerprint still tells a phantom-only model.
    assert synthetic_only(None, {"source": ["synthetic"]}) and not synthetic_only(None, {"source": []})
    assert caveats(None, {"source": ["synthetic"]}) == [SYNTHETIC_CAVEAT]
    assert not synthetic_only(None, {"source": ["cohen", "synthetic"]})


def test_no_labels_or_a_zero_loss_weight_leave_a_head_untrained() -> None:
    unlabelled = [Record(f"/d/{i}.png", f"p{i}", "montgomery", lung_mask=("m.png",)) for i in range(2)]
    heads = training_heads(unlabelled, CLASSES, loss_weights={"lung": 0.0, "cls": 1.0})
    assert heads["lung"]["loss_weight"] == 0.0
    assert untrained_outputs(heads) == {
        "lung_mask",
        "infection_map",
        "severity.from_maps",
        "probabilities",
        "explanation",  # learned from class labels through the gated classification
    }
    with pytest.raises(KeyError, match="valid heads"):
        head_training(heads, "explanation")


def test_build_module_records_the_heads_of_the_train_split(tiny_train_cfg: Callable[..., DictConfig]) -> None:
    cfg = tiny_train_cfg("data.options.label_only_fraction=0.25", "record_training_data=false", n_train=8)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)
    heads = module.extra_metadata["heads"]
    assert heads == training_heads(
        datamodule.datasets["train"].items,
        module.net.classes,
        module.net.severity_targets,
        module.loss.weights,
    )
    assert heads["n_items"] == 8 and heads["lung"]["n"] == 6 and heads["cls"]["n"] == 8
    assert heads["sources"] == {"synthetic": 8} and heads["infection"]["loss_weight"] == 1.0
    json.dumps(module.extra_metadata)


def test_a_fine_tuned_head_inherits_what_it_learned_from_phantoms() -> None:
    phantoms = synthetic_splits(n_train=8, n_val=0, n_test=0, size=32, classes=CLASSES)["train"]
    pretrained = training_heads(phantoms, CLASSES, TARGETS)
    fine_tuned = training_heads(cohen_like(4), CLASSES, TARGETS)
    assert "infection_map" in untrained_outputs(fine_tuned, TARGETS)
    heads = inherit_heads(fine_tuned, pretrained, fresh=[], source="pre.ckpt")
    assert heads["inherited_from"] == "pre.ckpt" and heads["n_items"] == 12
    assert heads["sources"] == {"cohen": 4, "synthetic": 8} and not synthetic_only(heads)
    assert untrained_outputs(heads, TARGETS) == frozenset()
    assert head_training(heads, "infection").synthetic_only and head_training(heads, "lung").real
    assert heads["cls"]["classes"] == {"normal": 5, "covid19": 7}
    assert caveats(heads, None, TARGETS) == [
        "infection head trained on synthetic phantoms only",
        "brixia severity head trained on synthetic phantoms only",  # Cohen-like items have no Brixia score
    ]
    # A segmentation head that started fresh inherits nothing: the infection head stays untrained.
    fresh = inherit_heads(fine_tuned, pretrained, fresh=["segmentation_head"], source="pre.ckpt")
    assert "infection_map" in untrained_outputs(fresh, TARGETS) and fresh["lung"] == fine_tuned["lung"]
    # An older source without a record: its heads are assumed trained on its fingerprint's sources.
    assumed = inherit_heads(
        fine_tuned, None, source="old.ckpt", training_data={"source": ["synthetic"], "n_items": 8}
    )
    assert assumed["inherited_assumed"] and head_training(assumed, "infection").synthetic_only


def test_build_module_records_heads_inherited_through_init_from(
    tiny_train_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    pre_cfg = tiny_train_cfg(n_train=8)
    pre_net = instantiate(pre_cfg.model, _convert_="all")
    phantoms = synthetic_splits(n_train=8, n_val=0, n_test=0, size=64)["train"]
    pre = save_checkpoint(
        tmp_path / "pre.ckpt",
        pre_net,
        Preprocessing(image_size=64),
        {"heads": training_heads(phantoms, pre_net.classes, pre_net.severity_targets)},
    )
    # Fine-tuning items without any mask: on its own, the infection head would be untrained.
    cfg = tiny_train_cfg(
        "data.options.label_only_fraction=1.0", "record_training_data=false", f"init_from={pre}", n_train=8
    )
    module = build_module(cfg, instantiate(cfg.data, _convert_="all"))
    heads = module.extra_metadata["heads"]
    assert heads["inherited_from"] == str(pre) and heads["infection"]["n"] == 8
    assert untrained_outputs(heads, module.net.severity_targets) == frozenset()
    assert head_training(heads, "infection").synthetic_only
