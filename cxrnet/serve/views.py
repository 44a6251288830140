"""What the page shows, as JSON: one prediction's result document, and the model card of the loaded model.

The texts of the model card (intended use, the not-a-medical-device notice, limitations) are the ones
``python -m cxrnet.export format=hf`` writes into a pretrained folder's README (:mod:`cxrnet.model_card`);
the classes, the heads and what each was trained on come from the model itself
(:mod:`cxrnet.provenance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrnet.model_card import INTENDED_USE, LIMITATIONS, MEDICAL_NOTICE
from cxrnet.prediction import Prediction
from cxrnet.predictor import Predictor
from cxrnet.provenance import HEADS, head_training
from cxrnet.report.overlay_content import UNTRAINED_TEXT
from cxrnet.severity import ZONE_NAMES

__all__ = ["NOTICE", "model_card_data", "result_document"]

NOTICE = "Research software, not a medical device."
"""The line every view of the page carries."""

_HEAD_LABELS = {"lung": "lung mask", "infection": "infection map", "cls": "classifier (and explanation map)"}
_LAYER_TITLES = {
    "lung": "lung contour",
    "infection": "infection heatmap",
    "explanation": "explanation heatmap",
    "zones": "zones and zone scores",
}
_LAYER_OUTPUTS = {
    "lung": "lung_mask",
    "infection": "infection_map",
    "explanation": "explanation",
    "zones": "lung_mask",
}


def _zones(severity: dict[str, Any], marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each zone's score and infected fraction (map-derived severity) with where the page writes it."""
    where = {mark["zone"]: mark for mark in marks}
    out = []
    for zone in ZONE_NAMES:
        mark = where.get(zone, {})
        out.append(
            {
                "zone": zone,
                "score": severity.get(f"zone_score_{zone}"),
                "fraction": severity.get(f"zone_fraction_{zone}"),
                "x": mark.get("x"),
                "y": mark.get("y"),
            }
        )
    return out


def result_document(
    prediction: Prediction,
    *,
    result_id: str,
    name: str,
    preview_shape: tuple[int, int],
    layers: dict[str, bool],
    zone_marks: list[dict[str, Any]],
    downloads: list[str],
    notes: list[str],
    source: str = "upload",
    row: int | None = None,
) -> dict[str, Any]:
    """The result the page draws for one image.

    Args:
        prediction: the model's prediction (maps at the image's size).
        result_id: the result's id in its session.
        name: the file name shown.
        preview_shape: (height, width) of the preview and of every layer, in pixels.
        layers: layer name → whether it was drawn (an untrained head's layer is not).
        zone_marks: the zones' centres (:func:`cxrnet.serve.layers.zone_layer`).
        downloads: the files offered for download (``lung_mask``, ``infection_mask``, ``json``).
        notes: what the reader recovered on the way (e.g. a file that ends early but was read).
        source: ``"upload"`` or ``"browse"``.
        row: the browse row.

    Returns:
        JSON-ready: ``id``, ``name``, ``source``, ``row``, ``label``, ``probabilities`` (in the model's class
        order), ``severity`` (``from_maps``, ``learned``, as :attr:`Prediction.severity`), ``zones`` (score,
        fraction and centre of each zone), ``layers`` (``name``, ``title``, ``available``, ``reason``),
        ``downloads``, ``width``, ``height`` (the image's), ``preview_width``, ``preview_height``,
        ``untrained`` (outputs withheld, and the learned targets without training), ``caveats``, ``notes``.
    """
    summary = prediction.to_dict()
    maps = summary["severity"].get("from_maps", {})
    untrained = set(prediction.untrained)
    layer_rows = []
    for layer, drawn in layers.items():
        output = _LAYER_OUTPUTS[layer]
        reason = None
        if not drawn:
            reason = UNTRAINED_TEXT.get(output, "not available") if output in untrained else "not available"
        layer_rows.append(
            {"name": layer, "title": _LAYER_TITLES[layer], "available": drawn, "reason": reason}
        )
    return {
        "id": result_id,
        "name": name,
        "source": source,
        "row": row,
        "label": summary["label"],
        "probabilities": [{"name": k, "p": v} for k, v in summary["probabilities"].items()],
        "severity": summary["severity"],
        "zones": _zones(maps, zone_marks) if maps else [],
        "layers": layer_rows,
        "downloads": list(downloads),
        "width": int(prediction.meta.get("width", 0)),
        "height": int(prediction.meta.get("height", 0)),
        "preview_width": int(preview_shape[1]),
        "preview_height": int(preview_shape[0]),
        "untrained": sorted(untrained),
        "untrained_text": {k: v for k, v in UNTRAINED_TEXT.items() if k in untrained},
        "caveats": summary["caveats"],
        "notes": list(notes),
    }


def model_card_data(predictor: Predictor) -> dict[str, Any]:
    """The model card the page shows: classes, heads and their training data, intended use and limitations.

    Returns:
        JSON-ready: ``name`` (the model file's name), ``classes`` (``name``, ``training_items``),
        ``severity_targets``, ``heads`` (``head``, ``trained``, ``items``, ``sources``; ``None`` when the
        model does not record them), ``training_data`` (``n_items``, ``sources``), ``image_size``,
        ``temperature``, ``precision``, ``untrained``, ``caveats``, ``intended_use``, ``notice``,
        ``limitations``.
    """
    heads = predictor.heads
    per_class = ((heads or {}).get("cls") or {}).get("classes", {})
    head_rows = None
    if heads is not None:
        head_rows = []
        for name in (*HEADS, *(f"severity/{t}" for t in predictor.severity_targets)):
            head = head_training(heads, name)
            label = _HEAD_LABELS.get(name, f"learned severity {name.removeprefix('severity/')}")
            head_rows.append(
                {"head": label, "trained": head.trained, "items": head.n, "sources": dict(head.sources)}
            )
    training = None
    if heads is not None and heads.get("sources"):
        training = {"n_items": heads.get("n_items"), "sources": dict(heads["sources"])}
    checkpoint = predictor.checkpoint
    return {
        "name": Path(checkpoint).name if checkpoint else "model",
        "classes": [{"name": c, "training_items": per_class.get(c)} for c in predictor.classes],
        "severity_targets": predictor.severity_targets,
        "heads": head_rows,
        "training_data": training,
        "image_size": int(predictor.preprocessing.image_size),
        "temperature": float(predictor.temperature),
        "precision": predictor.precision,
        "untrained": sorted(predictor.untrained),
        "caveats": list(predictor.caveats),
        "intended_use": INTENDED_USE,
        "notice": MEDICAL_NOTICE,
        "limitations": list(LIMITATIONS),
    }
