"""Patient-level cross-validation of ``+experiment=cohen_cpu``, from random init and from phantom pretraining.

    python experiments/cohen_cpu/cross_validate.py --root <covid-chestxray-dataset> --out runs/cohen_cv \
        [--folds 3] [--pretrained runs/phantom_pretrain/checkpoints/last.ckpt] [--max-time 00:00:05:00] \
        [--equal-total 00:00:11:30] [-- <more Hydra overrides for every run>]

For each condition (``random``; ``phantom`` when ``--pretrained`` is given; ``random_equal_total`` with
``--equal-total``) and each fold it trains with
``data.folds=<K> data.fold=<k>`` (a run whose ``metrics.json`` exists is not trained again), then loads the
fold's ``best.ckpt`` with :func:`cxrnet.load_model` and scores it on that fold's test patients:

* classification: the pooled confusion matrix over all folds, macro-F1 and per-class sensitivity, and the
  COVID-19-vs-rest AUROC of ``p(covid19)``;
* lungs: per-image Dice against the hand-drawn (v7labs) masks, and against the model-generated lungVAE ones;
* explanation: the share of the explanation map's mass inside the hand-drawn lung mask (the lungs cover about
  a third of a film, so a map with no preference scores about that);
* severity: the learned head's mean absolute error per radiologists' score against always predicting the
  training folds' median, and the Spearman correlation of the map-derived infected fraction with the
  radiologists' geographic extent (reported even where the infection head never saw a real mask, with that
  caveat, because that is the question phantom pretraining asks).

Writes ``<out>/results.json`` and ``<out>/results.md``. Every number is computed here from predictions; nothing
is copied from the training logs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[2]


def train_fold(root: str, out: Path, folds: int, fold: int, overrides: list[str]) -> float:
    """Train one fold (skipped when its metrics.json exists); returns the wall time in seconds (0 if skipped)."""
    if (out / "metrics.json").exists():
        return 0.0
    command = [
        sys.executable, "-m", "cxrnet.train", "+experiment=cohen_cpu", f"data.root={root}",
        f"data.folds={folds}", f"data.fold={fold}", f"hydra.run.dir={out}", *overrides,
    ]  # fmt: skip
    started = time.monotonic()
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ)
    return time.monotonic() - started


def fold_records(root: str, folds: int, fold: int, overrides: list[str]) -> dict[str, list[Any]]:
    """The train and test records of one fold, exactly as the training run split them."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "+experiment=cohen_cpu",
                f"data.root={root}",
                f"data.folds={folds}",
                f"data.fold={fold}",
            ]
            + [o for o in overrides if o.startswith("data.")],
        )
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")
    return {split: list(dm.datasets[split].items) for split in ("train", "test")}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def score_fold(checkpoint: Path, records: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One row per test image: truth, prediction, lung Dice, explanation share in the lungs, severity."""
    from cxrnet import load_model
    from cxrnet.data.masks import read_mask

    predictor = load_model(checkpoint, keep_untrained=True)
    rows = []
    for record in records["test"]:
        prediction = predictor.predict(record.path)
        row: dict[str, Any] = {
            "path": record.path,
            "patient": record.patient_id,
            "label": record.label,
            "predicted": prediction.label,
            "probabilities": prediction.probabilities,
            "severity_true": dict(record.severity),
            "severity_learned": dict(prediction.severity.get("learned", {})),
            "mask_origin": record.meta.get("lung_mask_origin", ""),
            "untrained": sorted(prediction.untrained),
        }
        from_maps = prediction.severity.get("from_maps", {})
        row["map_extent"] = from_maps.get("fraction_total")
        if record.lung_mask:
            truth = read_mask(record.lung_mask[0], shape=prediction.lung_mask.shape)
            row["lung_dice"] = dice(prediction.lung_mask, truth)
            weight = prediction.explanation.astype(np.float64)
            row["explanation_in_lung"] = float((weight * truth).sum() / max(weight.sum(), 1e-12))
            row["lung_share_of_image"] = float(truth.mean())
        rows.append(row)
    return rows


def summarise(
    rows: list[dict[str, Any]], classes: list[str], train_medians: dict[str, float]
) -> dict[str, Any]:
    """Pooled classification, segmentation, explanation and severity figures of one condition."""
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for row in rows:
        confusion[index[row["label"]], index[row["predicted"]]] += 1
    support, predicted = confusion.sum(1), confusion.sum(0)
    tp = np.diag(confusion)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(len(classes)), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(len(classes)), where=predicted > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(len(classes)), where=precision + recall > 0
    )
    result: dict[str, Any] = {
        "n_images": len(rows),
        "confusion": {"classes": classes, "rows_true_cols_predicted": confusion.tolist()},
        "macro_f1_present_classes": float(f1[present].mean()),
        "sensitivity": {c: float(recall[i]) for i, c in enumerate(classes) if present[i]},
        "distinct_predicted_classes": int((predicted > 0).sum()),
        "accuracy": float(tp.sum() / max(1, confusion.sum())),
    }
    covid = np.array([row["label"] == "covid19" for row in rows])
    if 0 < covid.sum() < len(covid):
        from sklearn.metrics import roc_auc_score

        scores = np.array([row["probabilities"].get("covid19", np.nan) for row in rows])
        result["covid_vs_rest_auroc"] = float(roc_auc_score(covid, scores))
    for origin in ("v7labs", "lungVAE"):
        picked = [r for r in rows if r["mask_origin"] == origin and "lung_dice" in r]
        if picked:
            result[f"lung_dice_{origin}"] = {
                "mean": float(np.mean([r["lung_dice"] for r in picked])),
                "n": len(picked),
            }
    hand = [r for r in rows if r["mask_origin"] == "v7labs" and "explanation_in_lung" in r]
    if hand:
        result["explanation_in_hand_drawn_lung"] = {
            "mean": float(np.mean([r["explanation_in_lung"] for r in hand])),
            "min": float(np.min([r["explanation_in_lung"] for r in hand])),
            "lung_share_of_image": float(np.mean([r["lung_share_of_image"] for r in hand])),
            "n": len(hand),
        }
    severity: dict[str, Any] = {}
    for target, median in train_medians.items():
        pairs = [
            (r["severity_true"][target], r["severity_learned"].get(target))
            for r in rows
            if target in r["severity_true"]
        ]
        pairs = [(t, p) for t, p in pairs if p is not None]
        if pairs:
            truth, guess = np.array(pairs, dtype=float).T
            severity[target] = {
                "n": len(pairs),
                "mae_learned": float(np.abs(truth - guess).mean()),
                "mae_train_median": float(np.abs(truth - median).mean()),
            }
    extent = [(r["severity_true"]["geographic_extent"], r["map_extent"]) for r in rows
              if "geographic_extent" in r["severity_true"] and r["map_extent"] is not None]  # fmt: skip
    if len(extent) >= 3:
        rho = spearmanr(*np.array(extent, dtype=float).T).statistic
        severity["map_extent_vs_geographic_extent_spearman"] = {"rho": float(rho), "n": len(extent)}
    result["severity"] = severity
    result["untrained_outputs"] = sorted({name for r in rows for name in r["untrained"]})
    return result


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown tables (one column per condition)."""
    conditions = list(results["conditions"])
    lines = ["| metric | " + " | ".join(conditions) + " |", "|---|" + "---:|" * len(conditions)]

    def row(name: str, get: Any) -> None:
        values = []
        for c in conditions:
            try:
                values.append(get(results["conditions"][c]))
            except (KeyError, TypeError):
                values.append("n/a")
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    s = results["conditions"]
    row("test images (all folds)", lambda r: str(r["n_images"]))
    row("macro-F1 (classes present)", lambda r: f"{r['macro_f1_present_classes']:.3f}")
    row("accuracy", lambda r: f"{r['accuracy']:.3f}")
    row("distinct classes predicted", lambda r: str(r["distinct_predicted_classes"]))
    for c in next(iter(s.values()))["sensitivity"]:
        row(f"sensitivity {c}", lambda r, c=c: f"{r['sensitivity'][c]:.2f}")
    row("COVID-19 vs rest AUROC", lambda r: f"{r['covid_vs_rest_auroc']:.3f}")
    row(
        "lung Dice, hand-drawn masks",
        lambda r: f"{r['lung_dice_v7labs']['mean']:.3f} (n={r['lung_dice_v7labs']['n']})",
    )
    row(
        "lung Dice, lungVAE masks",
        lambda r: f"{r['lung_dice_lungVAE']['mean']:.3f} (n={r['lung_dice_lungVAE']['n']})",
    )
    row(
        "explanation mass in hand-drawn lungs",
        lambda r: (
            f"{r['explanation_in_hand_drawn_lung']['mean']:.3f} (min {r['explanation_in_hand_drawn_lung']['min']:.2f};"
            f" lungs {r['explanation_in_hand_drawn_lung']['lung_share_of_image']:.2f} of the film)"
        ),
    )
    targets = sorted({t for r in s.values() for t in r["severity"] if not t.startswith("map_")})
    for t in targets:
        row(
            f"severity MAE {t}: learned / train median",
            lambda r, t=t: (
                f"{r['severity'][t]['mae_learned']:.2f} / {r['severity'][t]['mae_train_median']:.2f} (n={r['severity'][t]['n']})"
            ),
        )
    row(
        "map-derived infected fraction vs geographic extent (Spearman)",
        lambda r: f"{r['severity']['map_extent_vs_geographic_extent_spearman']['rho']:.2f}",
    )
    row("training wall time per fold (s)", lambda r: ", ".join(f"{t:.0f}" for t in r["train_seconds"]))
    for c in conditions:
        conf = s[c]["confusion"]
        lines += [
            "",
            f"Confusion matrix, {c} (rows: truth, columns: predicted; {', '.join(conf['classes'])}):",
            "",
        ]
        lines += ["| | " + " | ".join(conf["classes"]) + " |", "|---|" + "---:|" * len(conf["classes"])]
        lines += [
            f"| {name} | " + " | ".join(map(str, counts)) + " |"
            for name, counts in zip(conf["classes"], conf["rows_true_cols_predicted"])
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="covid-chestxray-dataset folder")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--pretrained", default=None, help="checkpoint of +experiment=phantom_pretrain")
    parser.add_argument("--max-time", default="00:00:05:00", help="trainer.max_time of each fold")
    parser.add_argument(
        "--equal-total",
        default=None,
        help="also train from random init with this trainer.max_time (the fine-tuning budget plus the "
        "pretraining time): the comparison at equal total CPU budget",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    conditions: dict[str, list[str]] = {"random": []}
    if args.pretrained:
        conditions["phantom"] = [f"init_from={Path(args.pretrained).resolve()}"]
    if args.equal_total:
        conditions["random_equal_total"] = [f"trainer.max_time={args.equal_total}"]
    overrides = [f"trainer.max_time={args.max_time}", *args.overrides]
    results: dict[str, Any] = {
        "root": args.root,
        "folds": args.folds,
        "overrides": overrides,
        "conditions": {},
    }
    for name, extra in conditions.items():
        rows, seconds, medians = [], [], {}
        for fold in range(args.folds):
            out = (args.out / name / f"fold{fold}").resolve()
            out.parent.mkdir(parents=True, exist_ok=True)
            seconds.append(train_fold(args.root, out, args.folds, fold, overrides + extra))
            records = fold_records(args.root, args.folds, fold, overrides)
            fold_rows = score_fold(out / "checkpoints" / "best.ckpt", records)
            for row in fold_rows:
                row["fold"] = fold
            rows += fold_rows
            train_scores: dict[str, list[float]] = {}
            for record in records["train"]:
                for target, value in record.severity.items():
                    train_scores.setdefault(target, []).append(value)
            medians[fold] = {t: float(np.median(v)) for t, v in train_scores.items()}
            print(f"{name} fold {fold}: {len(fold_rows)} test images, {seconds[-1]:.0f} s", flush=True)
        # each test image is compared with the median of its own fold's training scores
        by_fold = {}
        for fold in range(args.folds):
            fold_rows = [r for r in rows if r["fold"] == fold]
            by_fold[fold] = summarise(fold_rows, ["normal", "bacterial", "viral", "covid19"], medians[fold])
        summary = summarise(rows, ["normal", "bacterial", "viral", "covid19"], {})
        severity: dict[str, Any] = {}
        for target in sorted({t for m in medians.values() for t in m}):
            per = [by_fold[f]["severity"][target] for f in by_fold if target in by_fold[f]["severity"]]
            if per:
                n = sum(p["n"] for p in per)
                severity[target] = {
                    "n": n,
                    "mae_learned": sum(p["mae_learned"] * p["n"] for p in per) / n,
                    "mae_train_median": sum(p["mae_train_median"] * p["n"] for p in per) / n,
                }
        summary["severity"] = {**summary["severity"], **severity}
        summary["train_seconds"] = seconds
        summary["per_fold"] = by_fold
        results["conditions"][name] = summary
        (args.out / f"rows_{name}.json").write_text(json.dumps(rows, indent=1, default=str))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
