"""The model card (``README.md``) of a pretrained folder, in the Hugging Face model-card style.

YAML front matter (``library_name: cxrnet``, tags) for the Hub, then: what the model is, intended use
(research only), the NOT A MEDICAL DEVICE notice, classes, outputs and which heads were trained,
preprocessing and calibration, training data (the fingerprint summary and provenance of the checkpoint),
evaluation (the run's ``metrics.json`` when there is one), how to use it, and limitations. Everything comes
from the folder's ``config.json`` (:mod:`cxrnet.pretrained`), so card and config cannot disagree.

Pure Python: no torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrnet.provenance import HEADS, SYNTHETIC_CAVEAT, caveats, head_training, synthetic_only

__all__ = ["INTENDED_USE", "LIMITATIONS", "MEDICAL_NOTICE", "TAGS", "model_card"]

TAGS = (
    "cxrnet",
    "chest-x-ray",
    "medical-imaging",
    "image-classification",
    "image-segmentation",
    "research-only",
)

MEDICAL_NOTICE = (
    "**NOT A MEDICAL DEVICE.** This model is research software. It has not been cleared or approved by any "
    "regulator, has not been validated for clinical use, and must not be used to diagnose, triage, treat or "
    "make any other decision about a patient. Its outputs are not findings."
)

INTENDED_USE = (
    "Research only: reproducing and comparing results, studying the explanation maps, benchmarking, and as "
    "a starting point for fine-tuning on other data (`python -m cxrnet.train init_from=...` from a "
    "checkpoint). Not for clinical use of any kind, and not for images unlike the training data (other views "
    "than frontal, children, other scanners or hospitals) without a validation of your own."
)

LIMITATIONS = (
    "Public chest X-ray collections, COVID-19 ones above all, mix sources by class: a model can learn the "
    "hospital, the scanner or text markers instead of the disease, and score well on a test split of the "
    "same sources. Expect lower performance on data from elsewhere.",
    "The metrics above come from one test split of the training run's data; they say nothing about other "
    "populations, devices or prevalences.",
    "The explanation map shows the region the classifier looked at; it is not a segmentation of disease and "
    "not proof of a reason.",
    "Severity derived from the maps inherits the errors of the lung and infection heads; learned severity "
    "scores exist only for the targets listed above.",
    "Probabilities are calibrated only if a temperature is given above, and only for data like the "
    "calibration split.",
    "The licence of these weights follows the terms of the training data; check them before reuse.",
)

MAX_METRIC_ROWS = 200
"""Most rows of the metrics table (a run's metrics.json holds a few dozen)."""

_HEAD_LABELS = {"lung": "lung mask", "infection": "infection map", "cls": "classifier (and explanation map)"}


def _cell(value: Any) -> str:
    """A value as a Markdown table cell (pipes escaped, numbers to 4 significant digits)."""
    if isinstance(value, bool) or value is None:
        text = {True: "yes", False: "no", None: "n/a"}[value]
    elif isinstance(value, float):
        text = "n/a" if not math.isfinite(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _sources(sources: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{name} ({count})" for name, count in (sources or {}).items()) or "-"


def _front_matter() -> str:
    return "\n".join(["---", "library_name: cxrnet", "tags:", *(f"- {tag}" for tag in TAGS), "---"])


def _heads_section(config: Mapping[str, Any]) -> str:
    heads = config.get("heads")
    targets = list(config.get("severity_targets", []))
    if heads is None:
        return (
            "The checkpoint predates the record of what each head was trained on: every head is assumed "
            "trained, and nothing is withheld."
        )
    rows = []
    for name in (*HEADS, *(f"severity/{t}" for t in targets)):
        head = head_training(heads, name)
        label = _HEAD_LABELS.get(name, f"learned severity `{name.removeprefix('severity/')}`")
        rows.append([label, head.trained, head.n, _sources(head.sources)])
    text = _table(["head", "trained", "training items with a target", "sources (items)"], rows)
    withheld = config.get("untrained_outputs") or []
    if withheld:
        text += (
            "\n\nOutputs of heads that saw no training target are withheld by `cxrnet` (`None` in a "
            f"prediction, named in `Prediction.untrained`): {', '.join(f'`{o}`' for o in withheld)}."
        )
    if heads.get("inherited_from"):
        text += (
            f"\n\nHeads were fine-tuned from `{heads['inherited_from']}`; their counts include its training."
        )
    return text


def _calibration(config: Mapping[str, Any]) -> str:
    temperature = config.get("temperature")
    if temperature is None:
        return "- Not calibrated (temperature 1): probabilities are the raw softmax of the logits."
    text = f"- Temperature **{float(temperature):.4g}** (probabilities are `softmax(logits / T)`)"
    report = config.get("calibrated_on") or {}
    if report:
        text += (
            f", fitted on {report.get('n_items', '?')} items of the {report.get('split', '?')} split of "
            f"`data={report.get('data', '?')}`; ECE {_cell(report.get('ece_before'))} → "
            f"{_cell(report.get('ece_after'))}"
        )
    return text + "."


def _training_data(config: Mapping[str, Any]) -> str:
    data = config.get("training_data")
    heads = config.get("heads") or {}
    lines = []
    if data:
        lines += [
            f"- Sources: {', '.join(f'`{s}`' for s in data.get('source', [])) or 'not recorded'}",
            f"- Training items: {data.get('n_items', 'n/a')}, patients: {data.get('n_patients', 'n/a')}",
            f"- Fingerprint ({data.get('hash', '?')} image hashes and patient ids, SHA-256): "
            f"`{data.get('sha256', 'n/a')}`. The ids and hashes themselves stay in the checkpoint; whoever "
            "holds it can check that it describes the same training set.",
        ]
    elif heads.get("sources"):
        lines.append(f"- Sources (items): {_sources(heads['sources'])}; no fingerprint was recorded.")
    else:
        lines.append("- The checkpoint records no training-data fingerprint.")
    source = config.get("source") or {}
    if source:
        lines.append(f"- Exported from `{source.get('checkpoint')}` (SHA-256 `{source.get('sha256')}`).")
        if source.get("training_config_sha256"):
            lines.append(f"- Training config SHA-256: `{source['training_config_sha256']}`.")
    notes = caveats(config.get("heads"), data, config.get("severity_targets", []))
    lines += [f"- **Caveat:** {note}." for note in notes]
    return "\n".join(lines)


def _evaluation(metrics: Mapping[str, Any] | None, metrics_source: str | Path | None) -> str:
    if not metrics:
        return (
            "No `metrics.json` was found beside the checkpoint's run folder (`<run>/metrics.json` for "
            "`<run>/checkpoints/best.ckpt`), so no test metrics are reported here. Evaluate the model on "
            "data of your own with `python -m cxrnet.evaluate`."
        )
    rows = [[key, value] for key, value in sorted(metrics.items())][:MAX_METRIC_ROWS]
    where = f"`{Path(metrics_source).name}`" if metrics_source else "the run's metrics"
    text = (
        f"Final test metrics of the training run ({where}, written by `python -m cxrnet.train` for the run's "
        "best checkpoint, on the test split of its data config; no confidence intervals):\n\n"
        + _table(["metric", "value"], rows)
    )
    if len(metrics) > MAX_METRIC_ROWS:
        text += f"\n\n({len(metrics) - MAX_METRIC_ROWS} more metrics in the run's metrics.json.)"
    return text


def model_card(
    config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    metrics_source: str | Path | None = None,
    name: str = "cxrnet model",
) -> str:
    """The ``README.md`` of a pretrained folder.

    Args:
        config: the folder's ``config.json`` (:func:`cxrnet.pretrained.pretrained_config`).
        metrics: the training run's ``metrics.json`` (flat keys such as ``test/lung/dice``), if known.
        metrics_source: where ``metrics`` came from (its file name is shown).
        name: the model's name, for the title (the folder's name).

    Returns:
        Markdown with YAML front matter.
    """
    model = config["model"]
    classes = list(config["classes"])
    targets = list(config.get("severity_targets", []))
    preprocessing = config["preprocessing"]
    per_class = ((config.get("heads") or {}).get("cls") or {}).get("classes", {})
    phantoms = synthetic_only(config.get("heads"), config.get("training_data"))
    outputs = "class probabilities, a lung mask, an infection map, an explanation map, severity from the maps"
    if targets:
        outputs += f" and learned severity scores ({', '.join(targets)})"
    sections = [
        _front_matter(),
        f"# {name}",
        (
            f"A [cxrnet](https://github.com/cxrnet/cxrnet) multitask chest X-ray model: {outputs}. "
            f"Encoder `{model.get('encoder')}`, decoder `{model.get('decoder', 'unet')}`, classifier encoder "
            f"`{model.get('classifier_encoder') or model.get('encoder')}`"
            f"{', gated by the predicted lungs' if model.get('gate_with_lungs') else ''}."
        ),
        f"> {MEDICAL_NOTICE}",
        *([f"> **{SYNTHETIC_CAVEAT.capitalize()}.**"] if phantoms else []),
        "## Intended use",
        INTENDED_USE,
        "## How to use",
        "\n".join(
            [
                "```python",
                "from cxrnet import load_model                      # pip install cxrnet",
                'model = load_model("path/to/this/folder")           # or, from the Hub:',
                '# from cxrnet.hub import from_pretrained; model = from_pretrained("<user>/<repo>")',
                'pred = model.predict("radiograph.png")              # PNG, JPEG, DICOM, array or tensor',
                "pred.label, pred.probabilities, pred.lung_mask, pred.severity",
                "```",
            ]
        ),
        "## Classes",
        _table(
            ["index", "class", "training items"],
            [[i, name, per_class.get(name, "n/a")] for i, name in enumerate(classes)],
        ),
        "## Outputs and trained heads",
        _heads_section(config),
        "## Preprocessing and calibration",
        "\n".join(
            [
                f"- Input: {config.get('input', 'grayscale image in [0, 1]')}.",
                f"- Image size {preprocessing['image_size']} px; normalisation "
                f"`(x - {preprocessing['mean']}) / {preprocessing['std']}` on the [0, 1] image. `cxrnet` "
                "letterboxes every input to the square and maps the outputs back to the input's size.",
                f"- Training precision: `{config.get('precision') or 'not recorded'}`.",
                _calibration(config),
            ]
        ),
        "## Training data",
        _training_data(config),
        "## Evaluation",
        _evaluation(metrics, metrics_source),
        "## Limitations",
        "\n".join(f"- {item}" for item in LIMITATIONS),
        "## Provenance",
        (
            f"Trained with cxrnet {config.get('cxrnet_version', '?')}, exported with cxrnet "
            f"{config.get('exported_with', '?')} (`python -m cxrnet.export format=hf`). `config.json` holds "
            "everything needed to rebuild the network; `model.safetensors` holds its weights."
        ),
    ]
    return "\n\n".join(sections) + "\n"
