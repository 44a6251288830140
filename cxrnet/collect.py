"""Run a network over a dataset split and keep what evaluation needs, per item, in bounded memory.

Maps are reduced to numbers as each batch passes (Dice, IoU, HD95 and the pixel counts for pooled scores,
map-derived severity, explanation scores), so memory grows with the number of items, not with their pixels;
only a few best and worst examples keep their image and masks, for the overlay figures. Everything is
scored at the model's resolution, on the letterboxed masks the model was trained on.

The result is a :class:`~cxrnet.evaluation.results.Collected`, which the numeric core
(:mod:`cxrnet.evaluation`) scores and :mod:`cxrnet.report.evaluation` lays out; ``python -m cxrnet.evaluate``
and ``python -m cxrnet.calibrate`` run this module, which is the one that needs torch.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrnet.data.dataset import CXRDataset, collate
from cxrnet.data.transforms import Preprocessing
from cxrnet.devices import autocast, inference_precision
from cxrnet.evaluation.results import MAP_ESTIMATES, MASKS, Collected, Example, MaskScores
from cxrnet.evaluation.segmentation import dice, hausdorff95, iou
from cxrnet.explain.metrics import explanation_in_region_share, explanation_scores
from cxrnet.models.cxrnet import CXRNet
from cxrnet.severity import assess_severity


def make_loader(dataset: Dataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """An ordered, unaugmented loader over ``dataset`` with the Sample collate."""
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )


def collect_logits(
    net: CXRNet,
    dataset: CXRDataset,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class logits of every item (for calibration), at ``precision`` (see :func:`collect`).

    Returns:
        ``(labels int64 (N,), logits float64 (N, C), patient_ids (N,))``.
    """
    net = net.to(device).eval()
    precision = inference_precision(precision, device)
    labels, logits, patients = [], [], []
    with torch.inference_mode():
        for batch in make_loader(dataset, batch_size, num_workers):
            with autocast(precision, device):
                out = net(batch["image"].to(device))
            logits.append(out.class_logits.double().cpu().numpy())
            labels.append(batch["label"].numpy())
            patients += [str(m["patient_id"]) for m in batch["meta"]]
    n_classes = len(net.classes)
    return (
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(logits) if logits else np.zeros((0, n_classes)),
        np.asarray(patients, dtype=object),
    )


class _Examples:
    """Keeps the ``k`` highest- and lowest-scoring items, overall and among items with a lesion in the reference."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._count = 0
        self._best_lesion: list[tuple[float, int, Example]] = []
        self._best_any: list[tuple[float, int, Example]] = []
        self._worst: list[tuple[float, int, Example]] = []
        self._worst_lesion: list[tuple[float, int, Example]] = []

    def wants(self, score: float, lesion: bool) -> bool:
        """Whether an item with this score would be kept (so that its arrays are copied only then)."""
        if self.k <= 0 or math.isnan(score):
            return False
        return any(len(heap) < self.k or key > heap[0][0] for heap, key in self._targets(score, lesion))

    def add(self, example: Example, lesion: bool) -> None:
        self._count += 1
        for heap, key in self._targets(example.score, lesion):
            if len(heap) < self.k or key > heap[0][0]:
                heapq.heappush(heap, (key, self._count, example))
                if len(heap) > self.k:
                    heapq.heappop(heap)

    def _targets(self, score: float, lesion: bool) -> list[tuple[list[tuple[float, int, Example]], float]]:
        targets = [(self._best_any, score), (self._worst, -score)]
        return [(self._best_lesion, score), (self._worst_lesion, -score), *targets] if lesion else targets

    def result(self) -> dict[str, list[Example]]:
        """``best`` (among lesion images when there are any), ``worst`` and ``worst_lesion``, best-first / worst-first."""

        def ordered(heap: list[tuple[float, int, Example]]) -> list[Example]:
            return [e for _, _, e in sorted(heap, key=lambda t: (-t[0], t[1]))]

        return {
            "best": ordered(self._best_lesion or self._best_any),
            "worst": ordered(self._worst),
            "worst_lesion": ordered(self._worst_lesion),
        }


def _score_mask(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "hd95": hausdorff95(pred, ref),
        "intersection": int(np.logical_and(pred, ref).sum()),
        "predicted": int(pred.sum()),
        "reference": int(ref.sum()),
        "union": int(np.logical_or(pred, ref).sum()),
    }


_NO_REFERENCE: dict[str, float] = {
    "dice": math.nan,
    "iou": math.nan,
    "hd95": math.nan,
    "intersection": 0,
    "predicted": 0,
    "reference": 0,
    "union": 0,
}


def _ranking_score(scores: dict[str, dict[str, float]], has: dict[str, bool]) -> float:
    values = [scores["lung"]["dice"]] if has["lung"] else []
    inf = scores["infection"]
    # An empty reference predicted empty is trivially right; it says nothing about segmentation quality.
    if has["infection"] and (inf["reference"] > 0 or inf["predicted"] > 0):
        values.append(inf["dice"])
    return float(np.mean(values)) if values else math.nan


class _Accumulator:
    """Reduces batches of model outputs to per-item numbers (see :func:`collect`)."""

    def __init__(
        self, net: CXRNet, preprocessing: Preprocessing, ref_names: list[str], n_examples: int
    ) -> None:
        self.classes = list(net.classes)
        self.learned_names = list(net.severity_targets)
        self.mean, self.std = preprocessing.mean, preprocessing.std
        self.ref_names = ref_names
        self.columns: dict[str, list[Any]] = defaultdict(list)
        self.mask_rows: dict[str, list[dict[str, float]]] = {m: [] for m in MASKS}
        self.has_rows: dict[str, list[bool]] = {m: [] for m in MASKS}
        self.explanation: list[dict[str, float]] = []
        self.examples = _Examples(n_examples)

    def add(self, batch: dict[str, Any], out: Any) -> None:
        """Score one batch: ``batch`` is a collated Sample batch, ``out`` the network's CXRNetOutput."""
        n = len(batch["label"])
        self.columns["logits"].append(out.class_logits.double().cpu().numpy())
        self.columns["labels"].append(batch["label"].numpy())
        self.columns["reference"].append(batch["severity"].double().numpy().reshape(n, -1))
        if out.severity is not None:
            self.columns["learned"].append(out.severity.double().cpu().numpy())
        pred = {
            "lung": (out.lung_logits[:, 0] > 0).cpu().numpy(),  # logit > 0 is probability > 0.5
            "infection": (out.infection_logits[:, 0] > 0).cpu().numpy(),
        }
        true = {m: batch[f"{m}_mask"][:, 0].numpy() > 0.5 for m in MASKS}
        has = {m: batch[f"has_{m}_mask"].numpy() for m in MASKS}
        saliency = out.explanation[:, 0].float().cpu().numpy()
        predicted = out.class_logits.argmax(dim=1).cpu().numpy()
        images = batch["image"][:, 0].numpy()
        for i, meta in enumerate(batch["meta"]):
            masks = {m: (pred[m][i], true[m][i] if has[m][i] else None) for m in MASKS}
            self._add_item(meta, masks, saliency[i], images[i], int(batch["label"][i]), int(predicted[i]))

    def _add_item(
        self,
        meta: dict[str, Any],
        masks: dict[str, tuple[np.ndarray, np.ndarray | None]],
        saliency: np.ndarray,
        image: np.ndarray,
        label: int,
        predicted: int,
    ) -> None:
        """Score one item: ``masks`` maps lung / infection to (prediction, reference or ``None``), bool H×W."""
        self.columns["patient_ids"].append(str(meta["patient_id"]))
        self.columns["paths"].append(str(meta["path"]))
        self.columns["sources"].append(str(meta.get("source", "")))
        scores = {m: _score_mask(p, r) if r is not None else _NO_REFERENCE for m, (p, r) in masks.items()}
        for m, (_, reference) in masks.items():
            self.mask_rows[m].append(scores[m])
            self.has_rows[m].append(reference is not None)
        severity = assess_severity(masks["lung"][0], masks["infection"][0]).to_dict()
        self.columns["map"].append(
            [float(severity[MAP_ESTIMATES[r]]) if r in MAP_ESTIMATES else math.nan for r in self.ref_names]
        )
        lung_ref, infection_ref = masks["lung"][1], masks["infection"][1]
        self.explanation.append(_explanation(saliency, infection_ref, lung_ref))
        score = _ranking_score(scores, {m: r is not None for m, (_, r) in masks.items()})
        lesion = infection_ref is not None and bool(infection_ref.any())
        if self.examples.wants(score, lesion):  # copy pixels only for the few items that are kept
            example = Example(
                image=np.clip((image * self.std + self.mean) * 255.0, 0, 255).astype(np.uint8),
                masks={m: (None if r is None else r.copy(), p.copy()) for m, (p, r) in masks.items()},
                dice={m: float(scores[m]["dice"]) for m in MASKS},
                title=_title(str(meta["patient_id"]), label, predicted, self.classes),
                score=score,
            )
            self.examples.add(example, lesion)

    def result(self) -> Collected:
        """Everything accumulated so far as a :class:`Collected`."""
        cols = self.columns
        n, refs = len(cols["patient_ids"]), self.ref_names
        reference = _stack(cols["reference"], len(refs))
        map_values = np.asarray(cols["map"], dtype=np.float64).reshape(n, len(refs))
        learned = _stack(cols["learned"], len(self.learned_names))
        return Collected(
            classes=self.classes,
            patient_ids=np.asarray(cols["patient_ids"], dtype=object),
            paths=list(cols["paths"]),
            sources=list(cols["sources"]),
            labels=np.concatenate(cols["labels"]).astype(np.int64) if n else np.zeros(0, np.int64),
            logits=_stack(cols["logits"], len(self.classes)),
            masks={m: _mask_scores(self.mask_rows[m], self.has_rows[m]) for m in MASKS},
            severity_reference={name: reference[:, k] for k, name in enumerate(refs)},
            severity_map={name: map_values[:, k] for k, name in enumerate(refs) if name in MAP_ESTIMATES},
            severity_learned={name: learned[:, k] for k, name in enumerate(self.learned_names)},
            explanation=_columns(self.explanation),
            examples=self.examples.result(),
        )


def collect(
    net: CXRNet,
    dataset: CXRDataset,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    n_examples: int = 4,
    precision: str = "auto",
) -> Collected:
    """Run ``net`` over ``dataset`` (eval mode, ``torch.inference_mode``) and score every item.

    Args:
        net: the network; its ``classes`` name the logits.
        dataset: the split, without augmentation; its ``severity_targets`` name the reference scores.
        batch_size: items per forward pass.
        num_workers: data-loading processes.
        device: ``"cpu"``, ``"cuda"``, ...
        n_examples: best and worst items kept for the overlay figures.
        precision: ``"auto"`` (the rule of :func:`cxrnet.devices.resolve_precision`, as predict and training
            use: bf16 autocast where the hardware has bfloat16 units) or a Lightning precision name.

    Returns:
        A :class:`Collected`.
    """
    net = net.to(device).eval()
    precision = inference_precision(precision, device)
    acc = _Accumulator(net, dataset.preprocessing, list(dataset.severity_targets), n_examples)
    with torch.inference_mode():
        for batch in make_loader(dataset, batch_size, num_workers):
            with autocast(precision, device):
                out = net(batch["image"].to(device))
            acc.add(batch, out.float())
    return dataclasses.replace(acc.result(), precision=precision)


def _explanation(
    saliency: np.ndarray, infection: np.ndarray | None, lung: np.ndarray | None
) -> dict[str, float]:
    if infection is not None:
        return explanation_scores(saliency, infection, lung)
    if lung is not None:
        return {"lung_share": explanation_in_region_share(saliency, lung)}
    return {}


def _title(patient: str, label: int, predicted: int, classes: Sequence[str]) -> str:
    short = patient if len(patient) <= 18 else "\u2026" + patient[-17:]
    truth = classes[label] if label >= 0 else "unlabelled"
    return f"{short}\n{truth} \u2192 {classes[predicted]}"


def _stack(chunks: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, width))


def _columns(rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: np.array([row.get(k, math.nan) for row in rows], dtype=np.float64) for k in keys}


def _mask_scores(rows: list[dict[str, float]], has: list[bool]) -> MaskScores:
    def col(key: str, dtype: type) -> np.ndarray:
        return np.array([row[key] for row in rows], dtype=dtype)

    return MaskScores(
        has_reference=np.array(has, dtype=bool),
        dice=col("dice", np.float64),
        iou=col("iou", np.float64),
        hd95=col("hd95", np.float64),
        intersection=col("intersection", np.int64),
        predicted=col("predicted", np.int64),
        reference=col("reference", np.int64),
        union=col("union", np.int64),
    )
