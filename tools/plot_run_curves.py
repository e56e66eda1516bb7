"""Test accuracy per epoch of finished runs, from their records, in one figure.

    python tools/plot_run_curves.py OUT.png LABEL=results/.../records/<run_id>.json [LABEL=...]
"""
from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print("usage: plot_run_curves.py OUT.png LABEL=record.json [LABEL=record.json ...]", file=sys.stderr)
        return 2
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for spec in argv[1:]:
        label, path = spec.split("=", 1)
        record = json.load(open(path))
        hist = [h for h in record["history"] if "test_acc" in h]
        ax.plot([h["epoch"] for h in hist], [100 * h["test_acc"] for h in hist], marker="o", ms=3, label=label)
        tta = record["metrics"].get("test_acc_tta")
        if tta is not None:
            ax.scatter([hist[-1]["epoch"]], [100 * tta], marker="*", s=80, label=f"{label}, TTA")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Test accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(argv[0], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
