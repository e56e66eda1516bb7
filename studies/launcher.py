"""Where a study's runs execute: in this process, or as submitit jobs (SLURM, or locally to test that path).

Every launcher runs the same function per run (`run_job`: train one config, write its record) and
the study reads the records afterwards, so a table never depends on how its runs were launched.
"""
from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from robustlab.config import Context, ExperimentConfig
from robustlab.errors import require
from robustlab.launch import (LAUNCHERS, add_launcher_args, check_launcher_args, job_failure,  # noqa: F401 (re-exported)
                             make_executor)

Runner = Callable[[ExperimentConfig, Path, Context], "dict | None"]


def run_experiment(cfg: ExperimentConfig, out: Path, ctx: Context) -> dict | None:
    """`robustlab.experiment.run_experiment`, imported when the first run starts (not to print --help)."""
    from robustlab.experiment import run_experiment as run

    return run(cfg, out, ctx)


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
    reason = job_failure(job)
    require(reason is None, f"run {cfg.run_id} failed in job {job.job_id}: {reason} (log: {job.paths.stderr})")
