"""Per-run logs beside the run record: `metrics.csv` (one row per epoch) and TensorBoard event files.

`fit(..., loggers=...)` takes any object with the `RunLogger` methods (or a list of them): it calls
`log_epoch(row)` after every epoch with the history row and `log_final(metrics, figures, hparams)`
once after the final test evaluation; whoever made the loggers calls `close()` (also when training fails).

    from robustlab.loggers import run_loggers
    loggers = run_loggers("run")  # run/metrics.csv and TensorBoard events in run/
    try:
        fit(strategy, train_loader, cfg, test_loader=test, loggers=loggers)
    finally:
        loggers.close()

`tensorboard --logdir results/<study>` then shows each run (`runs/<run_id>`) as its own curve.
"""
from __future__ import annotations

import csv
import io
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Protocol, runtime_checkable

from robustlab.errors import UsageError
from robustlab.fileio import atomic_write

HParam = int | float | str | bool


@runtime_checkable
class RunLogger(Protocol):
    def log_epoch(self, row: dict) -> None: ...

    def log_final(self, metrics: dict, figures: dict, hparams: dict) -> None: ...

    def close(self) -> None: ...


def scalars(values: dict) -> dict[str, float]:
    """The real-number entries of a history row or metrics dict (lists, strings, None, bools dropped)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def flatten_hparams(config: dict, prefix: str = "") -> dict[str, HParam]:
    """A nested config as TensorBoard hyper-parameters: dotted keys, values int/float/str/bool.

    Lists and None become their string form ("[50, 75]", "None"); an empty dict is dropped.
    """
    out: dict[str, HParam] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class CSVLogger:
    """`metrics.csv`: one row per finished epoch, the history's columns, flushed as each epoch ends.

    The first row logged in a session drops any rows of that epoch or later already in the file,
    so a run resumed from its last checkpoint (or restarted from scratch) never duplicates rows.
    A column that appears later (e.g. a metric a strategy starts reporting) rewrites the file
    with the wider header; earlier rows leave that cell empty.
    """
    wants_figures = False

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.columns: list[str] = []
        self.rows: list[dict] | None = None  # None until the first epoch of this session

    def log_epoch(self, row: dict) -> None:
        if self.rows is None:
            self.rows, self.columns = self._earlier_rows(int(row["epoch"]))
            self.rows.append(row)
            self._rewrite(row)
            return
        self.rows.append(row)
        if any(k not in self.columns for k in row):
            self._rewrite(row)
        else:
            with open(self.path, "a", newline="") as f:
                self._writer(f).writerow(row)

    def log_final(self, metrics: dict, figures: dict, hparams: dict) -> None:
        pass  # the record holds the final metrics

    def close(self) -> None:
        pass  # every row is on disk as soon as it is logged

    def _earlier_rows(self, epoch: int) -> tuple[list[dict], list[str]]:
        if not self.path.is_file():
            return [], []
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if _epoch_of(r) is not None and _epoch_of(r) < epoch]
            return rows, list(reader.fieldnames or [])

    def _rewrite(self, row: dict) -> None:
        self.columns += [k for k in row if k not in self.columns]

        text = io.StringIO()
        writer = self._writer(text)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))

    def _writer(self, f) -> csv.DictWriter:
        # floats are written with repr(): reading them back gives the same numbers bit for bit
        return csv.DictWriter(f, fieldnames=self.columns, restval="", lineterminator="\n")


def _epoch_of(row: dict) -> int | None:
    try:
        return int(row.get("epoch") or "")
    except ValueError:
        return None


class TensorBoardLogger:
    """TensorBoard event files in `log_dir`.

    Every epoch: each number of the history row as a scalar at step = epoch (1-based), under its
    history name (`train_loss`, `val_acc`, `lr`, `label_precision`, ...). At the end: the figures
    (confusion matrix, reliability diagram), the final metrics as `final/<name>` scalars, and the
    run's hyper-parameters (`hparams` given here, then those fit() passes) linked to those metrics
    in the HPARAMS tab. A resumed run purges the events of the epochs it trains again.
    """
    wants_figures = True

    def __init__(self, log_dir: str | Path, hparams: dict | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UsageError("TensorBoard logging needs the tensorboard package "
                             "(pip install tensorboard), or pass --no-tensorboard") from None
        self.log_dir = Path(log_dir)
        self.hparams = flatten_hparams(hparams or {})
        self.writer = None
        self.step = 0

    def _open(self, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        if self.writer is None:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        return self.writer

    def log_epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        writer = self._open(purge_step=self.step)
        for key, value in scalars(row).items():
            if key != "epoch":
                writer.add_scalar(key, value, self.step)
        writer.flush()  # an interrupted run keeps its curves

    def log_final(self, metrics: dict, figures: dict, hparams: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        writer = self._open(purge_step=None)
        for tag, figure in figures.items():
            writer.add_figure(tag, figure, self.step, close=False)
        final = {f"final/{k}": v for k, v in scalars(metrics).items() if math.isfinite(v)}
        for tag, value in final.items():
            writer.add_scalar(tag, value, self.step)
        # Written into this run's own folder (SummaryWriter.add_hparams would open a timestamped
        # sub-folder), so the HPARAMS tab lists one row per run, named like its curves.
        merged = {**flatten_hparams(hparams), **self.hparams}
        for summary in hparams_summary(merged, final):
            writer.file_writer.add_summary(summary, self.step)
        writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class LoggerGroup:
    """Several loggers as one; a list passed to fit() becomes this."""

    def __init__(self, loggers: Iterable[RunLogger], class_names: list[str] | None = None):
        self.loggers = list(loggers)
        self.class_names = class_names  # labels the confusion matrix's rows and columns
        self.wants_figures = any(getattr(lg, "wants_figures", True) for lg in self.loggers)

    def log_epoch(self, row: dict) -> None:
        for logger in self.loggers:
            logger.log_epoch(row)

    def log_final(self, metrics: dict, figures: dict, hparams: dict) -> None:
        for logger in self.loggers:
            logger.log_final(metrics, figures, hparams)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def as_logger(loggers: RunLogger | Iterable[RunLogger] | None) -> RunLogger | None:
    """None, one logger, or a list of loggers -> one logger (or None)."""
    if loggers is None:
        return None
    if isinstance(loggers, RunLogger):
        return loggers
    group = LoggerGroup(loggers)
    return group if group.loggers else None


def tensorboard_enabled() -> bool:
    """False when ROBUSTLAB_TENSORBOARD is 0/false/no/off: a global --no-tensorboard for sweeps and CI
    (the event files and figures cost about 0.4 s of CPU per run)."""
    return os.environ.get("ROBUSTLAB_TENSORBOARD", "1").strip().lower() not in ("0", "false", "no", "off")


def run_loggers(run_dir: str | Path, tensorboard: bool = True, hparams: dict | None = None,
                class_names: list[str] | None = None) -> LoggerGroup:
    """The loggers of a run folder: `metrics.csv`, plus TensorBoard events unless turned off
    (`tensorboard=False`, or ROBUSTLAB_TENSORBOARD=0 in the environment)."""
    run_dir = Path(run_dir)
    loggers: list[RunLogger] = [CSVLogger(run_dir / "metrics.csv")]
    if tensorboard and tensorboard_enabled():
        loggers.append(TensorBoardLogger(run_dir, hparams=hparams))
    return LoggerGroup(loggers, class_names)


# ---- end-of-run figures --------------------------------------------------------------------

def confusion_figure(confusion: Any, class_names: list[str] | None = None, title: str = "test confusion matrix"):
    """Rows = true class, columns = predicted class; cells hold counts, shaded by row fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    k = counts.shape[0]
    names = class_names or [str(i) for i in range(k)]
    fraction = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(max(4.0, 0.45 * k + 2), 20.0)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:  # beyond that the numbers are unreadable; the shading still shows the structure
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if fraction[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.subplots_adjust(left=0.2, bottom=0.2, right=0.97, top=0.92)  # fixed margins: tight_layout costs a render
    return fig


def final_figures(logits, labels, confusion, class_names: list[str] | None = None) -> dict:
    """The end-of-run figures: test confusion matrix and reliability diagram."""
    from robustlab.calibration_plots import reliability_figure

    return {"test/confusion_matrix": confusion_figure(confusion, class_names),
            "test/reliability_diagram": reliability_figure(logits.detach().float().cpu(), labels.cpu(),
                                                           from_logits=True, title="test reliability")}


def log_final_results(logger: RunLogger, metrics: dict, train_config: dict, test_logits=None, test_labels=None) -> None:
    """fit()'s last call: final metrics, figures (when a logger wants them and there is a test
    split) and the training config as `train.*` hyper-parameters (the same names a flattened
    ExperimentConfig gives)."""
    figures = {}
    if test_logits is not None and "test_confusion" in metrics and getattr(logger, "wants_figures", True):
        figures = final_figures(test_logits, test_labels, metrics["test_confusion"],
                                getattr(logger, "class_names", None))
    try:
        logger.log_final(metrics, figures, flatten_hparams(train_config, "train."))
    finally:
        close_figures(figures)


def close_figures(figures: dict) -> None:
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)
