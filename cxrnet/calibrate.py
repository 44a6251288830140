"""Temperature-scale a checkpoint on its validation split:
``python -m cxrnet.calibrate checkpoint=<ckpt> data=<name> [data.root=<dir>] output=<new.ckpt>``.

One scalar T is fitted on the validation logits by minimising the negative log-likelihood
(:func:`cxrnet.evaluation.fit_temperature`) and stored as ``meta["temperature"]`` in a new checkpoint with
the same weights; ``python -m cxrnet.evaluate`` then reports ``softmax(logits / T)`` and the ECE before and
after. Scaling never changes the arg-max, so accuracy, sensitivities and AUROC stay the same. Fit on the
validation split, never on the test split you report.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig
from scipy.special import softmax

from cxrnet.checkpoint import preprocessing_of, save_checkpoint
from cxrnet.collect import collect_logits
from cxrnet.command import CONFIG_PATH, config_digest, open_split
from cxrnet.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature

log = logging.getLogger(__name__)

#: Metadata that :func:`cxrnet.checkpoint.save_checkpoint` writes afresh from the network itself.
REBUILT_KEYS = ("format_version", "cxrnet_version", "model", "classes", "severity_targets", "preprocessing")


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = apply_temperature(logits, temperature)[np.arange(labels.size), labels]
    return float(-np.mean(np.log(np.clip(probs, 1e-300, None))))


def calibrate(cfg: DictConfig) -> dict[str, Any]:
    """Fit a temperature on ``cfg.split`` (validation by default) and write a calibrated checkpoint.

    Args:
        cfg: a composed ``calibrate.yaml`` config.

    Returns:
        ``meta["calibrated_on"]`` of the new checkpoint: the temperature, the data it was fitted on, and the
        ECE and negative log-likelihood on that split before and after.

    Raises:
        ValueError: the split is unknown, empty or has no labelled item, or ``output`` would overwrite the
            input checkpoint.
    """
    source, output = Path(cfg.checkpoint), Path(cfg.output)
    if output.resolve() == source.resolve():
        raise ValueError(f"output={output} is the input checkpoint; write the calibrated model to a new file")
    opened = open_split(cfg)
    net, meta, data_cfg = opened.net, opened.meta, opened.data
    labels, logits, patients = collect_logits(
        net,
        opened.dataset,
        batch_size=opened.batch_size,
        num_workers=opened.num_workers,
        device=opened.device,
        precision=opened.precision,
    )
    keep = labels >= 0
    if not keep.any():
        raise ValueError(f"{opened.name} has no labelled item; a temperature needs class labels")
    labels, logits = labels[keep], logits[keep]
    temperature = fit_temperature(logits, labels)
    report = {
        "temperature": temperature,
        "checkpoint": str(source),
        "checkpoint_config_sha256": config_digest(meta),
        "data": str(data_cfg.name),
        "root": data_cfg.get("root"),
        "split": str(cfg.split),
        "precision": opened.precision,
        "n_items": int(keep.sum()),
        "n_patients": len(set(patients[keep])),
        "ece_before": expected_calibration_error(labels, softmax(logits, axis=1)),
        "ece_after": expected_calibration_error(labels, apply_temperature(logits, temperature)),
        "nll_before": _nll(logits, labels, 1.0),
        "nll_after": _nll(logits, labels, temperature),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if meta.get("temperature") is not None:
        log.info("replacing the temperature %.4f stored in %s", float(meta["temperature"]), source)
    extra = {k: v for k, v in meta.items() if k not in REBUILT_KEYS}
    save_checkpoint(
        output,
        net,
        preprocessing_of(meta),
        extra={**extra, "temperature": temperature, "calibrated_on": report},
    )
    print(
        f"temperature {temperature:.4f} fitted on {report['n_items']} items of the {cfg.split} split of "
        f"data={data_cfg.name}\n"
        f"ECE  before {report['ece_before']:.4f}  after {report['ece_after']:.4f}\n"
        f"NLL  before {report['nll_before']:.4f}  after {report['nll_after']:.4f}\n"
        f"calibrated checkpoint written to {output}"
    )
    return report


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="calibrate")
def main(cfg: DictConfig) -> None:
    calibrate(cfg)


if __name__ == "__main__":
    main()
