"""Where jobs execute: the `--launcher` options every command shares and the submitit executor
they describe (SLURM, or submitit's local executor to test that path on one machine).

The studies submit one job per run (`studies.launcher`); `robustlab.labelissues` one per fold.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from robustlab.cli import nonneg_int, positive_int
from robustlab.errors import UsageError

LAUNCHERS = ("direct", "local", "slurm")


def parse_shard(text: str) -> tuple[int, int]:
    """--shard I/N: this process runs share I (0-based) of N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"need 0 <= I < N, got {text!r}")
    return i, n


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launching runs")
    g.add_argument("--launcher", choices=LAUNCHERS, default="direct",
                   help="direct: in this process; slurm: one submitit job per run (per fold for label issues); "
                        "local: the same submitit path on this machine (default direct)")
    g.add_argument("--slurm-partition", default=None, help="SLURM partition (default: the cluster's)")
    g.add_argument("--slurm-gpus", type=nonneg_int, default=1, help="GPUs per SLURM job, 0 or more (default 1)")
    g.add_argument("--slurm-time", type=positive_int, default=240, help="time limit per job in minutes (default 240)")
    g.add_argument("--slurm-array-parallelism", type=positive_int, default=None, metavar="N",
                   help="submit one SLURM job array running at most N runs at once (default: one job per run)")
    g.add_argument("--local-parallelism", type=positive_int, default=1, metavar="N",
                   help="--launcher local: jobs running at once on this machine (default 1)")
    g.add_argument("--no-wait", action="store_true",
                   help="--launcher slurm: return after submitting; a later --collect builds the tables (the report)")


def check_launcher_args(args) -> None:
    if args.no_wait and args.launcher != "slurm":
        raise UsageError("--no-wait needs --launcher slurm (local jobs end with this process)")


def make_executor(args, folder: Path):
    """A submitit executor for `--launcher local|slurm` with the command's SLURM options."""
    import submitit

    if args.launcher == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=args.slurm_time)
        return executor
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as exc:  # no srun on this machine
        raise UsageError(f"--launcher slurm: {exc} (--launcher local tests the same path here)") from None
    params = {"timeout_min": args.slurm_time, "gpus_per_node": args.slurm_gpus, "tasks_per_node": 1,
              "slurm_partition": args.slurm_partition, "slurm_array_parallelism": args.slurm_array_parallelism}
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def job_failure(job) -> str | None:
    """The last line of a finished submitit job's exception (its type if empty), or None if it succeeded."""
    exc = job.exception()
    if exc is None:
        return None
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
