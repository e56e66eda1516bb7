"""Where a study's runs execute: in this process, or as submitit jobs (SLURM, or locally to test that path).

Every launcher runs the same function per run (`run_job`: train one config, write its record) and
the study reads the records afterwards, so a table never depends on how its runs were launched.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from robustlab.cli import nonneg_int, positive_int
from robustlab.config import Context, ExperimentConfig
from robustlab.errors import UsageError, require

LAUNCHERS = ("direct", "local", "slurm")
Runner = Callable[[ExperimentConfig, Path, Context], "dict | None"]


def run_experiment(cfg: ExperimentConfig, out: Path, ctx: Context) -> dict | None:
    """`robustlab.experiment.run_experiment`, imported when the first run starts (not to print --help)."""
    from robustlab.experiment import run_experiment as run

    return run(cfg, out, ctx)


def add_launcher_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launching runs")
    g.add_argument("--launcher", choices=LAUNCHERS, default="direct",
                   help="direct: in this process; slurm: one submitit job per run; local: the same submitit "
                        "path on this machine (default direct)")
    g.add_argument("--slurm-partition", default=None, help="SLURM partition (default: the cluster's)")
    g.add_argument("--slurm-gpus", type=nonneg_int, default=1, help="GPUs per SLURM job, 0 or more (default 1)")
    g.add_argument("--slurm-time", type=positive_int, default=240, help="time limit per job in minutes (default 240)")
    g.add_argument("--slurm-array-parallelism", type=positive_int, default=None, metavar="N",
                   help="submit one SLURM job array running at most N runs at once (default: one job per run)")
    g.add_argument("--local-parallelism", type=positive_int, default=1, metavar="N",
                   help="--launcher local: jobs running at once on this machine (default 1)")
    g.add_argument("--no-wait", action="store_true",
                   help="--launcher slurm: return after submitting; a later --collect builds the tables")


def check_launcher_args(args) -> None:
    if args.no_wait and args.launcher != "slurm":
        raise UsageError("--no-wait needs --launcher slurm (local jobs end with this process)")


def run_job(cfg: ExperimentConfig, out: Path, ctx: Context, runner: Runner | None, threads: int | None,
            plugins: list[str] | tuple = ()) -> bool:
    """One run inside a job process: True if it left a record (the record itself stays on disk).
    `plugins` (the study's --plugin values) are imported first, so their strategies are known there too."""
    from robustlab.plugins import load_plugins

    load_plugins(plugins)
    if threads:
        import torch

        torch.set_num_threads(threads)  # the local launcher matches the parent's numerics and CPU share
    return (runner or run_experiment)(cfg, Path(out), ctx) is not None


# ---- progress --------------------------------------------------------------------------------

class StudyProgress:
    """The outer bar: 'run k/N <arm> seed s' with elapsed time and an ETA from finished runs only."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.bar = total, None
        if not quiet and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, position=0, smoothing=0, file=sys.stderr, dynamic_ncols=True,
                            bar_format="{desc} |{bar:10}| {n}/{total} done [{elapsed} elapsed, ETA {remaining}]")

    def show(self, k: int, cfg: ExperimentConfig, what: str = "") -> None:
        if self.bar is not None:
            self.bar.set_description_str(f"run {k}/{self.total} {cfg.tag or cfg.strategy.name} seed {cfg.seed}{what}")

    def finished(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_direct(pending: list[ExperimentConfig], out: Path, ctx: Context, runner: Runner | None) -> None:
    progress = StudyProgress(len(pending), ctx.quiet)
    try:
        for k, cfg in enumerate(pending, 1):
            progress.show(k, cfg)
            (runner or run_experiment)(cfg, out, ctx)
            progress.finished()
    finally:
        progress.close()


# ---- submitit --------------------------------------------------------------------------------

def make_executor(args, folder: Path):
    """A submitit executor for `--launcher local|slurm` with the study's SLURM options."""
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


def run_submitit(pending: list[ExperimentConfig], args, ctx: Context, runner: Runner | None,
                 executor=None) -> list:
    """Submit one job per pending run; wait for them unless --no-wait. Returns the jobs."""
    out = Path(args.out)
    executor = executor or make_executor(args, out / "submitit")
    local = args.launcher == "local"
    threads = None
    if local:
        import torch

        threads = torch.get_num_threads()
    job_ctx = replace(ctx, quiet=True)  # jobs write to log files: no progress bars there
    progress = StudyProgress(len(pending), ctx.quiet or args.no_wait)
    plugins = list(getattr(args, "plugins", None) or [])
    submit = lambda cfg: executor.submit(run_job, cfg, out, job_ctx, runner, threads, plugins)  # noqa: E731
    jobs: list = []
    try:
        if not local and args.slurm_array_parallelism:
            with executor.batch():  # one job array
                jobs = [submit(cfg) for cfg in pending]
            queue, active = [], list(zip(pending, jobs))
        else:
            limit = args.local_parallelism if local else len(pending)
            queue, active = list(pending), []
            while queue and len(active) < limit:
                cfg = queue.pop(0)
                jobs.append(submit(cfg))
                active.append((cfg, jobs[-1]))
        if args.no_wait:
            print(f"submitted {len(jobs)} job(s) ({', '.join(j.job_id for j in jobs[:5])}"
                  f"{' ...' if len(jobs) > 5 else ''}); logs in {out / 'submitit'}; run the same command with "
                  f"--collect when they finish", file=sys.stderr)
            return jobs
        finished = 0
        while active:
            done = [(cfg, job) for cfg, job in active if job.done()]
            if not done:
                time.sleep(0.5)
                continue
            for cfg, job in done:
                active.remove((cfg, job))
                _raise_if_failed(cfg, job)
                finished += 1
                progress.show(finished, cfg, " done")
                progress.finished()
                if queue:
                    nxt = queue.pop(0)
                    jobs.append(submit(nxt))
                    active.append((nxt, jobs[-1]))
    finally:
        progress.close()
    return jobs


def _raise_if_failed(cfg: ExperimentConfig, job) -> None:
    exc = job.exception()
    if exc is None:
        return
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[-1].strip() if lines else type(exc).__name__
    require(False, f"run {cfg.run_id} failed in job {job.job_id}: {reason} (log: {job.paths.stderr})")
