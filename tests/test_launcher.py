"""Launching a study's runs through submitit: the local executor gives the table of a direct run;
SLURM options reach the sbatch script; arrays, the local job window and failed jobs."""
from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

from robustlab.errors import UsageError
from robustlab.experiment import Context, ExperimentConfig
from studies import architectures
from studies.common import study_parser
from studies.launcher import make_executor, run_submitit

TIME_COLUMNS = {"train_seconds", "train_seconds_std", "images_per_s", "images_per_s_std"}


def table(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


def test_local_launcher_gives_the_same_table_as_a_direct_run(tmp_path, tiny_cifar10):
    # A tiny dataset in CIFAR's own format keeps the job process's start-up cheap.
    common = ["--models", "tiny_cnn", "--epochs", "2", "--val-size", "20", "--train-size", "80", "--test-size", "40", "--data-dir", str(tiny_cifar10.root),
              "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    direct, local = tmp_path / "direct", tmp_path / "local"
    assert architectures.main(common + ["--out", str(direct), "--figures-dir", str(direct / "fig")]) == 0
    assert architectures.main(common + ["--out", str(local), "--figures-dir", str(local / "fig"),
                                        "--launcher", "local"]) == 0
    assert list((local / "submitit").glob("*_result.pkl"))  # the run went through a submitit job
    rows = table(local / "table.csv")
    assert rows == table(direct / "table.csv") and rows[0]["model"] == "tiny_cnn"
    assert float(rows[0]["test_loss"]) > 0 and rows[0]["test_acc_last"] != ""


def slurm_args(*extra):
    return study_parser("fake", "d").parse_args(["--launcher", "slurm", *extra])


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # pretend srun exists
    args = slurm_args("--slurm-partition", "gpu", "--slurm-gpus", "2", "--slurm-time", "90",
                      "--slurm-array-parallelism", "3")
    executor = make_executor(args, tmp_path)
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    assert "#SBATCH --partition=gpu" in script and "#SBATCH --gpus-per-node=2" in script
    assert "#SBATCH --time=90" in script and "#SBATCH --ntasks-per-node=1" in script
    assert executor._executor.parameters["array_parallelism"] == 3


def test_slurm_without_srun_and_no_wait_without_slurm_are_usage_errors(tmp_path, capsys):
    from submitit.slurm.slurm import SlurmExecutor

    if SlurmExecutor.affinity() > 0:
        pytest.skip("this machine has srun")
    with pytest.raises(UsageError, match="--launcher slurm: .*srun"):
        make_executor(slurm_args(), tmp_path)
    assert architectures.main(["--models", "tiny_cnn", "--launcher", "local", "--no-wait", "--out",
                               str(tmp_path)]) == 2
    assert "--no-wait needs --launcher slurm" in capsys.readouterr().err


class FakeJob:
    def __init__(self, job_id, error=None):
        self.job_id, self.error, self.polls = job_id, error, 0
        self.paths = SimpleNamespace(stderr=f"/logs/{job_id}.err")

    def done(self):
        self.polls += 1
        return self.polls > 1  # running at the first look, finished at the second

    def exception(self):
        return self.error


class FakeExecutor:
    """Records submissions; tracks how many jobs were unfinished at once."""

    def __init__(self, fail: str | None = None):
        self.jobs, self.batches, self.fail, self.max_active = [], 0, fail, 0

    def submit(self, fn, cfg, *rest):
        error = RuntimeError("Traceback ...\nValueError: boom") if cfg.tag == self.fail else None
        self.jobs.append(FakeJob(str(len(self.jobs)), error))
        self.max_active = max(self.max_active, sum(j.polls < 2 for j in self.jobs))
        return self.jobs[-1]

    def batch(self):
        import contextlib

        self.batches += 1
        return contextlib.nullcontext()


def configs(n=5):
    return [ExperimentConfig(tag=f"a{i}") for i in range(n)]


def test_local_jobs_run_at_most_local_parallelism_at_once(tmp_path):
    ex = FakeExecutor()
    args = study_parser("fake", "d").parse_args(["--launcher", "local", "--local-parallelism", "2", "--out", str(tmp_path)])
    jobs = run_submitit(configs(), args, Context(quiet=True), None, executor=ex)
    assert len(jobs) == 5 and ex.max_active == 2 and ex.batches == 0


def test_slurm_array_submits_every_run_in_one_batch(tmp_path):
    ex = FakeExecutor()
    args = study_parser("fake", "d").parse_args(["--launcher", "slurm", "--slurm-array-parallelism", "2",
                                                 "--out", str(tmp_path)])
    assert len(run_submitit(configs(), args, Context(quiet=True), None, executor=ex)) == 5
    assert ex.batches == 1 and ex.max_active == 5
    ex = FakeExecutor()
    args.no_wait = True  # submitted, not waited for
    assert len(run_submitit(configs(), args, Context(quiet=True), None, executor=ex)) == 5
    assert all(j.polls == 0 for j in ex.jobs)


def test_a_failed_job_is_a_one_line_error_naming_run_and_log(tmp_path):
    args = study_parser("fake", "d").parse_args(["--launcher", "local", "--out", str(tmp_path)])
    cfgs = configs(3)
    with pytest.raises(UsageError) as exc:
        run_submitit(cfgs, args, Context(quiet=True), None, executor=FakeExecutor(fail="a1"))
    msg = str(exc.value)
    assert "\n" not in msg and cfgs[1].run_id in msg and "ValueError: boom" in msg and "/logs/1.err" in msg
