"""Which heads of a model saw training targets, and from which data sources.

A CXRNet always has a lung head, an infection head and a classifier, whatever it was trained on. A head that
never saw a target (the infection head of a model trained on Cohen's covid-chestxray, which has lung masks
but no infection masks) still outputs a map, and severity derived from that map looks like a finding. The
checkpoint therefore records, under ``checkpoint["cxrnet"]["heads"]``, what each head was trained on:

.. code-block:: python

    {
        "n_items": 52, "sources": {"cohen": 52},            # the whole train split
        "lung": {"n": 52, "sources": {"cohen": 52}},
        "infection": {"n": 0, "n_empty": 0, "sources": {}},
        "cls": {"n": 52, "sources": {"cohen": 52}, "classes": {"covid19": 47, "normal": 5}},
        "severity": {"geographic_extent": {"n": 30, "sources": {"cohen": 30}}},
    }

(each head may also carry ``"loss_weight"``; a head whose loss weight was 0 learned nothing either).
:func:`training_heads` builds it from the train items without reading any pixels of files on disk;
:func:`head_training` reads one head back (:func:`head_metrics`: every head, as metrics.json keys);
:func:`untrained_outputs` and :func:`caveats` say what consumers (``cxrnet.inference``, ``cxrnet.predict``,
``cxrnet.evaluate``) must withhold or qualify. Checkpoints written before this record existed have no
``heads``: every head is then assumed trained, as before.

Pure Python: no torch, no Lightning.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cxrnet.data.records import RawItem, Record

__all__ = [
    "HEADS",
    "OUTPUTS",
    "SYNTHETIC",
    "SYNTHETIC_CAVEAT",
    "HeadTraining",
    "caveats",
    "head_metrics",
    "head_training",
    "inherit_heads",
    "synthetic_only",
    "training_heads",
    "untrained_outputs",
]

SYNTHETIC = "synthetic"
"""Dataset source name of the built-in phantoms (:mod:`cxrnet.data.phantoms`)."""

SYNTHETIC_CAVEAT = "trained on synthetic phantoms only; not validated on real radiographs"

HEADS = ("lung", "infection", "cls")
"""Heads recorded for every model; learned severity is recorded per target as ``"severity/<target>"``."""

OUTPUTS = (
    "lung_mask",
    "infection_map",
    "explanation",
    "probabilities",
    "severity.from_maps",
    "severity.learned.<target>",
)
"""Names :func:`untrained_outputs` uses: the :class:`~cxrnet.inference.Prediction` field each one withholds."""


def _presence(
    item: Record | RawItem, severity_targets: Sequence[str]
) -> tuple[str, bool, bool, bool, bool, list[str]]:
    """(source, lung, infection, infection known empty, label, severity targets present), no pixels of files."""
    if isinstance(item, Record):
        source = item.source
        lung = bool(item.lung_mask)
        known_empty = item.infection_mask is None and bool(item.meta.get("infection_mask_empty", False))
        infection = item.infection_mask is not None or known_empty
        label, severity = item.label, item.severity
    else:
        source = str(item.meta.get("source", ""))
        lung = item.lung_mask is not None
        infection = item.infection_mask is not None
        # Phantom masks are in memory: an all-zero one is cheap to recognise.
        known_empty = infection and not bool(item.infection_mask.any())
        label, severity = item.label, item.severity
    present = [t for t in severity_targets if _is_number(severity.get(t))]
    return source, lung, infection, known_empty, label is not None, present


def _is_number(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _head(counts: Counter[str], weight: float | None) -> dict[str, Any]:
    head: dict[str, Any] = {"n": sum(counts.values()), "sources": dict(sorted(counts.items()))}
    if weight is not None:
        head["loss_weight"] = float(weight)
    return head


def training_heads(
    items: Iterable[Record | RawItem],
    classes: Sequence[str],
    severity_targets: Sequence[str] = (),
    loss_weights: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """What each head of a model was trained on, for ``checkpoint["cxrnet"]["heads"]``.

    Args:
        items: the train split (``datamodule.datasets["train"].items``): :class:`Record` s (files on disk;
            presence is read from the record, as :mod:`cxrnet.data.findings` counts it, no pixels are read)
            or :class:`RawItem` s (phantoms in memory).
        classes: the model's class names; per-class counts are given for each of them (0 when unseen).
        severity_targets: the model's learned severity targets.
        loss_weights: the ``MultiTaskLoss`` task weights (``lung``, ``infection``, ``cls``, ``severity``), when
            known; stored with each head, since a head with weight 0 learned nothing from its targets.

    Returns:
        A JSON-ready dict (see the module docstring): ``n_items``, ``sources`` (items per source name), and per
        head ``n`` (items with a target) and ``sources``; ``infection`` also has ``n_empty`` (targets known to
        be empty, e.g. normals), ``cls`` has ``classes`` (items per class), ``severity`` maps each target to
        its own ``n`` and ``sources``.
    """
    weights = dict(loss_weights or {})
    all_sources: Counter[str] = Counter()
    lung: Counter[str] = Counter()
    infection: Counter[str] = Counter()
    labelled: Counter[str] = Counter()
    severity: dict[str, Counter[str]] = {t: Counter() for t in severity_targets}
    per_class = dict.fromkeys(classes, 0)
    n_empty = 0
    for item in items:
        source, has_lung, has_infection, known_empty, has_label, targets = _presence(item, severity_targets)
        all_sources[source] += 1
        if has_lung:
            lung[source] += 1
        if has_infection:
            infection[source] += 1
        n_empty += known_empty
        if has_label:
            labelled[source] += 1
            per_class[str(item.label)] = per_class.get(str(item.label), 0) + 1
        for target in targets:
            severity[target][source] += 1
    return {
        "n_items": sum(all_sources.values()),
        "sources": dict(sorted(all_sources.items())),
        "lung": _head(lung, weights.get("lung")),
        "infection": {**_head(infection, weights.get("infection")), "n_empty": n_empty},
        "cls": {**_head(labelled, weights.get("cls")), "classes": per_class},
        "severity": {t: _head(c, weights.get("severity")) for t, c in severity.items()},
    }


#: The CXRNet modules whose weights carry each head's training: a head inherits the record of the checkpoint
#: it was initialised from (``init_from``, :mod:`cxrnet.transfer`) only when none of them started fresh.
HEAD_MODULES: dict[str, tuple[str, ...]] = {
    "lung": ("encoder", "decoder", "segmentation_head"),
    "infection": ("encoder", "decoder", "segmentation_head"),
    "cls": ("classifier_encoder", "classification_head"),
    "severity": ("classifier_encoder", "severity_head"),
}


def _merge(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(ours)
    if "loss_weight" in theirs:  # a head learned from whichever training weighted its loss
        merged["loss_weight"] = max(float(ours.get("loss_weight", 0.0)), float(theirs["loss_weight"]))
    for key in ("n", "n_empty"):
        if key in ours or key in theirs:
            merged[key] = int(ours.get(key, 0)) + int(theirs.get(key, 0))
    sources = Counter(ours.get("sources", {}))
    sources.update(theirs.get("sources", {}))
    merged["sources"] = dict(sorted(sources.items()))
    if "classes" in ours:
        merged["classes"] = {
            c: int(n) + int(theirs.get("classes", {}).get(c, 0)) for c, n in ours["classes"].items()
        }
    return merged


def _assumed_heads(heads: Mapping[str, Any], training_data: Mapping[str, Any]) -> dict[str, Any]:
    """A record in which every head was trained on all items of ``training_data`` (nothing else is known)."""
    n = int(training_data.get("n_items", 0)) or 1
    names = list(training_data.get("source", [])) or ["unknown"]
    entry = {"n": n, "sources": {name: n // len(names) or 1 for name in names}}
    return {
        "n_items": n,
        "sources": entry["sources"],
        **{head: dict(entry) for head in HEADS},
        "severity": {target: dict(entry) for target in heads.get("severity", {})},
    }


def inherit_heads(
    heads: Mapping[str, Any],
    inherited: Mapping[str, Any] | None,
    fresh: Sequence[str] = (),
    source: str = "",
    training_data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The record of a network fine-tuned from another checkpoint: its own training plus what it inherited.

    Phantom pretraining (``+experiment=phantom_pretrain``) trains the infection head on exact phantom masks;
    fine-tuning on Cohen's films (no infection masks) then leaves it with weights learned from phantoms. The
    fine-tuned record must say so (infection: trained, synthetic only), not call the head untrained.

    Args:
        heads: :func:`training_heads` of the fine-tuning train split.
        inherited: the ``heads`` record of the initial checkpoint; ``None`` for an older checkpoint without
            one, whose heads are then assumed trained (as everywhere else) on its ``training_data`` sources.
        fresh: top-level network modules that kept their fresh initialisation
            (``InitReport.to_dict()["fresh"]``); a head none of whose :data:`HEAD_MODULES` is fresh inherits.
        source: the initial checkpoint's path, recorded as ``inherited_from``.
        training_data: the initial checkpoint's training fingerprint, used when ``inherited`` is ``None``.

    Returns:
        A new record: per inheriting head, counts and sources summed (classes per class); ``n_items`` and
        ``sources`` summed over both trainings; ``inherited_from`` names ``source``; ``inherited_assumed``
        is ``True`` when the source's counts had to be assumed from its fingerprint.
    """
    assumed = inherited is None
    if inherited is None:
        inherited = _assumed_heads(heads, training_data or {})
    fresh_set = set(fresh)

    def inherits(head: str) -> bool:
        return not fresh_set & set(HEAD_MODULES[head])

    out = dict(heads)
    out["n_items"] = int(heads.get("n_items", 0)) + int(inherited.get("n_items", 0))
    out["sources"] = _merge(heads, inherited)["sources"]
    for head in HEADS:
        if inherits(head) and head in inherited:
            out[head] = _merge(heads.get(head, {}), inherited[head])
    if inherits("severity"):
        out["severity"] = {
            target: _merge(entry, inherited.get("severity", {}).get(target, {}))
            for target, entry in heads.get("severity", {}).items()
        }
    out["inherited_from"] = source
    if assumed:
        out["inherited_assumed"] = True  # the source did not record its heads; its counts are estimates
    return out


@dataclass(frozen=True)
class HeadTraining:
    """What one head was trained on, read from a checkpoint's ``heads`` record.

    Attributes:
        head: ``"lung"``, ``"infection"``, ``"cls"`` or ``"severity/<target>"``.
        recorded: the checkpoint records its heads (``False`` for checkpoints older than the record: then the
            head is assumed trained and nothing else is known).
        n: training items with a target for this head (``None`` when not recorded).
        sources: items with a target, per dataset source name.
        trained: the head saw at least one informative target with a non-zero loss weight (always ``True``
            when not recorded). An infection head whose every target was empty counts as untrained: it never
            saw what infection looks like.
    """

    head: str
    recorded: bool
    n: int | None
    sources: Mapping[str, int] = field(default_factory=dict)
    trained: bool = True

    @property
    def synthetic_only(self) -> bool:
        """Trained, and only on the built-in phantoms (source ``"synthetic"``)."""
        return self.recorded and self.trained and set(self.sources) <= {SYNTHETIC}

    @property
    def real(self) -> bool:
        """Trained on at least one item of a real dataset (known only when recorded)."""
        return self.recorded and self.trained and any(s != SYNTHETIC for s in self.sources)


def head_training(heads: Mapping[str, Any] | None, head: str) -> HeadTraining:
    """Read one head back from a ``heads`` record (``checkpoint["cxrnet"].get("heads")``).

    Args:
        heads: the record, or ``None`` for an older checkpoint (every head then counts as trained).
        head: ``"lung"``, ``"infection"``, ``"cls"`` or ``"severity/<target>"``.

    Raises:
        KeyError: ``head`` is not one of those names; the message lists the valid ones.
    """
    if heads is None:
        return HeadTraining(head, recorded=False, n=None)
    if head.startswith("severity/"):
        entry = heads.get("severity", {}).get(head.split("/", 1)[1])
        if entry is None:  # a target the model regresses but the record does not name: no targets seen
            return HeadTraining(head, recorded=True, n=0, trained=False)
    elif head in HEADS:
        entry = heads.get(head)
        if entry is None:
            return HeadTraining(head, recorded=True, n=0, trained=False)
    else:
        valid = [*HEADS, *(f"severity/{t}" for t in heads.get("severity", {}))]
        raise KeyError(f"unknown head {head!r}; valid heads of this record: {valid}")
    n = int(entry.get("n", 0))
    informative = n - int(entry.get("n_empty", 0))
    trained = informative > 0 and float(entry.get("loss_weight", 1.0)) != 0.0
    return HeadTraining(head, recorded=True, n=n, sources=dict(entry.get("sources", {})), trained=trained)


def head_metrics(heads: Mapping[str, Any] | None, severity_targets: Sequence[str]) -> dict[str, Any]:
    """The ``heads/*`` keys of an evaluation's metrics.json (see :data:`cxrnet.evaluation.summary.METRIC_DOCS`).

    Args:
        heads: the checkpoint's ``heads`` record, or ``None`` for an older checkpoint.
        severity_targets: the model's learned severity targets.

    Returns:
        ``{"heads/recorded": bool, "heads/{head}/trained": bool, "heads/{head}/n_train": int or NaN}`` for every
        head of :data:`HEADS` and ``severity/<target>``; ``n_train`` is NaN when nothing is recorded.
    """
    out: dict[str, Any] = {"heads/recorded": heads is not None}
    for name in (*HEADS, *(f"severity/{t}" for t in severity_targets)):
        head = head_training(heads, name)
        out[f"heads/{name}/trained"] = head.trained
        out[f"heads/{name}/n_train"] = float("nan") if head.n is None else head.n
    return out


def untrained_outputs(
    heads: Mapping[str, Any] | None, severity_targets: Sequence[str] = ()
) -> frozenset[str]:
    """The outputs a model should not report as findings, named as in :data:`OUTPUTS`.

    ``severity.from_maps`` needs both the lung and the infection head; the explanation map is learned from
    class labels alone (the gated classification), so it needs the classifier.

    Args:
        heads: the checkpoint's ``heads`` record, or ``None`` (older checkpoint: nothing is untrained).
        severity_targets: the model's learned severity targets.

    Returns:
        e.g. ``frozenset({"infection_map", "severity.from_maps", "severity.learned.brixia"})``.
    """
    if heads is None:
        return frozenset()
    out = set()
    if not head_training(heads, "lung").trained:
        out |= {"lung_mask", "severity.from_maps"}
    if not head_training(heads, "infection").trained:
        out |= {"infection_map", "severity.from_maps"}
    if not head_training(heads, "cls").trained:
        out |= {"probabilities", "explanation"}
    out |= {
        f"severity.learned.{t}" for t in severity_targets if not head_training(heads, f"severity/{t}").trained
    }
    return frozenset(out)


def synthetic_only(heads: Mapping[str, Any] | None, training_data: Mapping[str, Any] | None = None) -> bool:
    """Whether every training item of a model was a synthetic phantom.

    Args:
        heads: the checkpoint's ``heads`` record, when it has one.
        training_data: the checkpoint's ``training_data`` fingerprint (its ``source`` lists the dataset names),
            used for checkpoints without ``heads``.

    Returns:
        ``True`` when the record (or, failing that, the fingerprint) names ``"synthetic"`` as the only source;
        ``False`` when there is real data or nothing is recorded.
    """
    if heads is not None and heads.get("sources"):
        return set(heads["sources"]) == {SYNTHETIC}
    sources = (training_data or {}).get("source") or []
    return bool(sources) and set(sources) == {SYNTHETIC}


def caveats(
    heads: Mapping[str, Any] | None,
    training_data: Mapping[str, Any] | None = None,
    severity_targets: Sequence[str] = (),
) -> list[str]:
    """Notes a report on a real radiograph must carry about the model's training.

    Returns:
        ``[SYNTHETIC_CAVEAT]`` when every training item was a phantom; otherwise one note per trained head
        whose targets all came from phantoms (e.g. ``"infection head trained on synthetic phantoms only"``,
        as when phantoms pretrain the infection head of a model for real films without infection masks);
        ``[]`` when nothing is known.
    """
    if synthetic_only(heads, training_data):
        return [SYNTHETIC_CAVEAT]
    if heads is None:
        return []
    names = [*HEADS, *(f"severity/{t}" for t in severity_targets)]
    labels = {"cls": "classifier", "lung": "lung head", "infection": "infection head"}
    return [
        f"{labels.get(name, name.removeprefix('severity/') + ' severity head')} trained on synthetic phantoms only"
        for name in names
        if head_training(heads, name).synthetic_only
    ]
