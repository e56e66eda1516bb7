"""Figures of a corruption-robustness study (presentation only; the numbers come from
`robustlab.robustness`): accuracy by corruption family and ECE vs severity over seeds, and a
per-model accuracy heatmap."""
from __future__ import annotations

from robustlab.robustness import SEVERITIES, CorruptionScores, long_rows


def _clean_rows(scores, families) -> list[dict]:
    return [{"model": label, "seed": seed, "family": f, "severity": 0, "acc": s.clean_acc, "ece": s.clean_ece}
            for (label, seed), s in scores.items() for f in families]


def _per_seed(frame, keys):
    """Mean over corruptions per run first, so that a figure's band is the spread over seeds."""
    return frame.groupby(keys, as_index=False, sort=False)[["acc", "ece"]].mean()


def family_figure(scores: dict[tuple[str, int], CorruptionScores]):
    """Accuracy vs severity (0 = clean), one panel per corruption family (benchmark corruptions;
    a family with only extras evaluated shows those), one line per model, mean and sd over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows = long_rows(scores)
    families = list(dict.fromkeys(r["family"] for r in rows))
    shown = [r for r in rows if r["benchmark"] or not any(o["benchmark"] and o["family"] == r["family"] for o in rows)]
    frame = _per_seed(pd.DataFrame(shown + _clean_rows(scores, families)), ["model", "seed", "family", "severity"])
    fig, axes = plt.subplots(1, len(families), figsize=(3.2 * len(families), 3.4), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        sns.lineplot(data=frame[frame.family == family], x="severity", y="acc", hue="model", marker="o", errorbar="sd",
                     ax=ax, legend=ax is axes[0][-1])
        ax.set(title=family, xlabel="severity (0 = clean)", ylabel="accuracy")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def ece_figure(scores: dict[tuple[str, int], CorruptionScores]):
    """ECE vs severity (0 = clean), averaged over the benchmark corruptions evaluated (all when none is),
    one line per model, mean and sd over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows = long_rows(scores)
    bench = [r for r in rows if r["benchmark"]] or rows
    frame = _per_seed(pd.DataFrame(bench + _clean_rows(scores, ["all"])), ["model", "seed", "severity"])
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    sns.lineplot(data=frame, x="severity", y="ece", hue="model", marker="o", errorbar="sd", ax=ax)
    ax.set(xlabel="severity (0 = clean)", ylabel="ECE (15 bins)", title="Calibration under corruption")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def heatmap_figure(label: str, scores: CorruptionScores):
    """Accuracy (%) per corruption x severity of one model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    corruptions = list(dict.fromkeys(c for c, _ in scores.acc))
    frame = pd.DataFrame([[100 * scores.acc[(c, s)] for s in SEVERITIES] for c in corruptions], index=corruptions,
                         columns=list(SEVERITIES))
    fig, ax = plt.subplots(figsize=(6.0, 0.4 * len(corruptions) + 1.6))
    sns.heatmap(frame, annot=True, fmt=".1f", cmap="viridis", vmin=0, vmax=100, cbar_kws={"label": "accuracy (%)"}, ax=ax)
    ax.set(xlabel="severity", ylabel="corruption", title=f"{label}: accuracy (clean {100 * scores.clean_acc:.1f}%)")
    fig.tight_layout()
    return fig
