"""The study skeleton: a study declares its runs, its table rows and its figures; this runs it.

    study = Study(arms=configs, row=table_row, tables=[Table(COLUMNS, keys=["arm"], title="...")],
                  figures=plot_everything)
    return run_study(study, args, ctx)

`run_study` runs (or shards, resumes, collects, launches through submitit) the grid, turns each
run with a record into a row (`row(run)`, plus its seed), averages every table over seeds
(mean ± std per group of `keys`), writes `<stem>.md/.csv` to the results and figures folders and
the per-run rows to `<runs_stem>.csv`, then calls `figures(results)`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from robustlab.config import Context, ExperimentConfig
from studies.common import Run, aggregate, output_dirs, print_configs, run_grid, should_tabulate, write_table


@dataclass
class Table:
    """One table: rows grouped by `keys` (one line per arm), every other column averaged over seeds."""
    columns: list[str]
    keys: list[str]
    title: str
    note: str = ""
    stem: str = "table"
    runs_stem: str = "runs"                     # per-run rows (one per seed), results folder only
    select: Callable[[dict], bool] | None = None  # which rows belong to this table (default: all)


@dataclass
class Results:
    """What a study's tables and figures are built from."""
    runs: list[Run]                  # the arms' runs that have a record
    rows: list[dict]                 # row(run) + seed, one per run, same order
    prerequisites: list[Run]         # runs the arms depended on (e.g. pretraining)
    dirs: list[Path]                 # results folder, then the figures folder


@dataclass
class Study:
    arms: list[ExperimentConfig]
    row: Callable[[Run], dict]
    tables: Sequence[Table] | Callable[[list[Run]], Sequence[Table]]
    figures: Callable[[Results], None] | None = None
    prerequisites: list[ExperimentConfig] = field(default_factory=list)  # finished before the arms start
    runner: Callable | None = None   # run one config (default: run_experiment); None result = skipped


def run_study(study: Study, args, ctx: Context) -> int:
    """Run the study's share of runs, then (unsharded, rank 0) write its tables and figures."""
    if getattr(args, "print_config", False):
        print_configs([*study.prerequisites, *study.arms], args)
        return 0
    before = run_grid(study.prerequisites, args, ctx) if study.prerequisites else []
    if getattr(args, "no_wait", False) and len(before) < len(study.prerequisites):
        print("the arms start once these prerequisite jobs have finished: run the same command again then",
              file=sys.stderr)
        return 0
    runs = run_grid(study.arms, args, ctx, runner=study.runner)
    if getattr(args, "no_wait", False) and not args.collect or not should_tabulate(args) or not runs:
        return 0
    results = Results(runs, [{**study.row(r), "seed": r.config.seed} for r in runs], before, output_dirs(args))
    tables = study.tables(runs) if callable(study.tables) else study.tables
    for table in tables:
        write_study_table(table, results.rows, results.dirs)
    if study.figures is not None:
        study.figures(results)
    return 0


def write_study_table(table: Table, rows: list[dict], dirs: list[Path]) -> str | None:
    """Seed-averaged table to every folder, per-run rows to the first; prints the markdown."""
    mine = [r for r in rows if table.select is None or table.select(r)]
    if not mine:
        return None
    metrics = [c for c in table.columns if c not in table.keys]
    md = write_table(aggregate(mine, table.keys, metrics), table.columns, dirs, stem=table.stem, title=table.title,
                     note=table.note or None)
    write_table(mine, table.columns + ["seed"], [dirs[0]], stem=table.runs_stem)
    print(md)
    return md


def seeds_of(runs: list[Run]) -> list[int]:
    return sorted({r.config.seed for r in runs})
