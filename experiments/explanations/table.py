"""Print the per-seed explanation table (Markdown) from the runs of ``run.sh``.

    python experiments/explanations/table.py runs/explanations/*/explain/explanations.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [
    ("average_precision", "AP"),
    ("pointing_game", "pointing"),
    ("top10_iou", "top-10 % IoU"),
    ("lung_share", "in lungs"),
    ("deletion_auc", "deletion AUC ↓"),
    ("insertion_auc", "insertion AUC ↑"),
    ("randomised_rank_correlation", "ρ vs randomised model ↓"),
]


def main(paths: list[str]) -> None:
    print("| run | method | " + " | ".join(title for _, title in COLUMNS) + " | n lesions / lungs | images/s |")
    print("|---|---|" + "---:|" * (len(COLUMNS) + 2))
    for path in paths:
        results = json.loads(Path(path).read_text())
        folder = Path(path).parent  # <run>/explain (run.sh) or <root>/<dataset> (real.sh)
        run = folder.parent.name if folder.name == "explain" else f"{folder.parent.name}/{folder.name}"
        for method, scores in results["methods"].items():
            cells = []
            for key, _ in COLUMNS:
                mean = scores.get(key, {}).get("mean")
                cells.append("–" if mean is None else f"{mean:.3f}")
            counts = f"{scores['average_precision']['n']} / {scores['lung_share']['n']}"
            rate = scores.get("images_per_second")
            rate_text = "–" if rate is None else f"{rate:.1f}"
            print(f"| {run} | {method} | " + " | ".join(cells) + f" | {counts} | {rate_text} |")


if __name__ == "__main__":
    main(sys.argv[1:])
