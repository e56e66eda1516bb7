"""The noisy-label study's training-dynamics figure: the memorization curves and loss histograms
(robustlab.dynamics_plots) of every noisy arm that recorded per-sample dynamics."""
from __future__ import annotations

from robustlab.dynamics import DYNAMICS_FILE, load_dynamics
from robustlab.dynamics_plots import has_both_groups, memorization_figure
from studies.common import save_figure


def plot_memorization(res, epoch: int | None = None) -> list:
    """`memorization.png` in the results and figures folders, one row per noisy arm (first seed
    of each) whose run folder holds dynamics with mislabeled samples; nothing when none does."""
    runs, seen = [], set()
    for run in sorted(res.runs, key=lambda r: r.config.seed):
        path = res.dirs[0] / "runs" / run.record["run_id"] / DYNAMICS_FILE
        if run.config.tag in seen or not run.record.get("noise") or not path.exists():
            continue
        dynamics = load_dynamics(path)
        if has_both_groups(dynamics):
            runs.append((f"{run.config.tag} (seed {run.config.seed})", dynamics))
            seen.add(run.config.tag)
    if not runs:
        return []
    epochs = min(len(d["loss"]) for _, d in runs)
    return save_figure(memorization_figure(runs, min(epoch, epochs) if epoch else None), "memorization", res.dirs)
