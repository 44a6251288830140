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
    print("| run | method | " + " | ".join(title for _, title in COLUMNS) + " | images/s |")
    print("|---|---|" + "---:|" * (len(COLUMNS) + 1))
    for path in paths:
        results = json.loads(Path(path).read_text())
        run = Path(path).parent.parent.name
        for method, scores in results["methods"].items():
            cells = []
            for key, _ in COLUMNS:
                mean = scores.get(key, {}).get("mean")
                cells.append("–" if mean is None else f"{mean:.3f}")
            rate = scores.get("images_per_second")
            print(f"| {run} | {method} | " + " | ".join(cells) + f" | {'–' if rate is None else f'{rate:.1f}'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
