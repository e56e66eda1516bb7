"""`python -m robustlab.train` on bad input: exit code 2 and exactly one line on stderr, never a
traceback; and one successful tiny run.

Starting Python and importing torch, torchvision, timm and scikit-learn costs 5-10 s per process
on a busy 2-core machine, so the error cases run in one warm helper process: it imports those
libraries once, then forks one child per case, and each child runs the module exactly as
`python -m` does (`runpy.run_module(..., run_name="__main__", alter_sys=True)`) with its own
stdout/stderr and exit status. A few cases, and the successful run, are also run as plain
`[sys.executable, "-m", "robustlab.train", ...]` subprocesses, to check that both agree.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Imports the heavy dependencies (but not robustlab.train itself, which runpy must execute fresh
# as __main__), then runs every case of a JSON list read on stdin in a forked child.
RUNNER = r"""
import json, os, runpy, sys, tempfile, traceback
import robustlab.cli, robustlab.experiment, robustlab.records  # noqa: F401
import torch, torchvision, timm, sklearn.model_selection  # noqa: F401
results = []
for argv in json.load(sys.stdin):
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.dup2(out.fileno(), 1); os.dup2(err.fileno(), 2)
            sys.argv = ["robustlab/train.py", *argv]
            runpy.run_module("robustlab.train", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:  # as the interpreter treats it
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    out.seek(0); err.seek(0)
    results.append({"code": os.waitstatus_to_exitcode(status), "stdout": out.read().decode(errors="replace"),
                    "stderr": err.read().decode(errors="replace")})
print(json.dumps(results))
"""


def env_for(threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.fixture(scope="module")
def paths(tmp_path_factory, session_cache_dir):
    root = tmp_path_factory.mktemp("cli")
    garbage = root / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 this is not a torch checkpoint " * 10)
    a_file = root / "a_file"
    a_file.write_text("a regular file, not a folder")
    empty_data = root / "empty-data"
    empty_data.mkdir()
    return {"root": root, "garbage": garbage, "a_file": a_file, "empty_data": empty_data, "cache": session_cache_dir}


@pytest.fixture(scope="module")
def real_data(request):
    """The real data dir, with its decoded arrays already in the session cache; None if absent."""
    try:
        data_dir = request.getfixturevalue("cifar10_dir")
    except pytest.skip.Exception:
        return None
    request.getfixturevalue("cifar10")  # decode once, in this process, into the session cache
    return data_dir


# id -> (arguments, needs the real data, fragment of the one stderr line)
CASES = {
    "missing-data-dir": (["--data-dir", "{root}/no/such/dir"], False, "data directory {root}/no/such/dir does not exist"),
    "unknown-model": (["--model", "resnet9000"], True, "unknown model 'resnet9000'; known models: "),
    "unknown-dataset": (["--dataset", "cifar11"], False, "unknown dataset 'cifar11'"),
    "lr-zero": (["--lr", "0"], False, "argument --lr: must be > 0, got 0"),
    "lr-negative": (["--lr", "-1"], False, "argument --lr: must be > 0, got -1"),
    "lr-nan": (["--lr", "nan"], False, "argument --lr: must be > 0, got nan"),
    "epochs-zero": (["--epochs", "0"], False, "argument --epochs: must be >= 1, got 0"),
    "batch-size-zero": (["--batch-size", "0"], False, "argument --batch-size: must be >= 1, got 0"),
    "val-larger-than-train": (["--val-size", "60000"], True, "exceeds the 50000 training images"),
    "garbage-checkpoint": (["--resume", "{garbage}", "--train-size", "100", "--val-size", "100", "--test-size", "100"],
                           True, "checkpoint {garbage} is unreadable or corrupt"),
    "unwritable-out": (["--out", "{a_file}/results"], False, "output directory {a_file}/results is not writable"),
    "noise-rate-one": (["--noise-rate", "1.0"], False, "argument --noise-rate: must be in [0, 1), got 1.0"),
    "coteach-without-noise": (["--strategy", "coteach"], False, "coteach needs a forget rate"),
    "unknown-option": (["--epochz", "3"], False, "unrecognized arguments: --epochz 3"),
    "empty-data-dir": (["--data-dir", "{empty_data}", "--dataset", "cifar100"], False,
                       "dataset 'cifar100' not found; tried: {empty_data}/cifar-100-python; {empty_data}/cifar100/{{train,test}}"),
}


def case_argv(case: str, paths: dict, data_dir) -> list[str]:
    args, needs_data, _ = CASES[case]
    fmt = {k: str(v) for k, v in paths.items()}
    args = [a.format(**fmt) for a in args]
    base = ["--data-dir", str(data_dir or paths["empty_data"]), "--cache-dir", str(paths["cache"]),
            "--out", str(paths["root"] / "out"), "--device", "cpu", "--quiet", "--model", "tiny_cnn", "--epochs", "1"]
    return base + args  # later options win


def expected_fragment(case: str, paths: dict) -> str:
    return CASES[case][2].format(**{k: str(v) for k, v in paths.items()})


class Launched:
    """A started process whose result is collected on first use."""

    def __init__(self, cmd: list[str], threads, stdin: str | None = None):
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env_for(threads), text=True, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.PIPE if stdin is not None else None)
        self._stdin, self._result = stdin, None

    def result(self) -> dict:
        if self._result is None:
            try:
                out, err = self.proc.communicate(self._stdin, timeout=600)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
            self._result = {"code": self.proc.returncode, "stdout": out, "stderr": err}
        return self._result


def module_cmd(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "robustlab.train", *argv]


def success_argv(paths: dict, data_dir) -> list[str]:
    return ["--model", "tiny_cnn", "--epochs", "1", "--train-size", "200", "--val-size", "100", "--test-size", "200",
            "--quiet", "--data-dir", str(data_dir), "--cache-dir", str(paths["cache"]), "--out", str(paths["root"] / "ok"),
            "--device", "cpu"]


PLAIN_CASE = "lr-negative"


@pytest.fixture(scope="module")
def launched(paths, real_data, _torch_threads):
    """Start every process at once (they overlap their imports), then hand them to the tests."""
    cases = [c for c, (_, needs_data, _) in CASES.items() if real_data is not None or not needs_data]
    argvs = [case_argv(c, paths, real_data) for c in cases]
    procs = {"runner": Launched([sys.executable, "-c", RUNNER], _torch_threads, stdin=json.dumps(argvs)),
             "plain": Launched(module_cmd(case_argv(PLAIN_CASE, paths, None)), _torch_threads)}
    if real_data is not None:
        procs["success"] = Launched(module_cmd(success_argv(paths, real_data)), _torch_threads)
    yield cases, procs
    for p in procs.values():
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


@pytest.fixture(scope="module")
def forked_results(launched):
    cases, procs = launched
    result = procs["runner"].result()
    assert result["code"] == 0, result["stderr"][-3000:]
    return dict(zip(cases, json.loads(result["stdout"].splitlines()[-1])))


def assert_one_line_usage_error(result: dict, fragment: str) -> None:
    err = result["stderr"]
    assert "Traceback" not in err and "Traceback" not in result["stdout"], err
    assert result["code"] == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip() and err.endswith("\n"), err
    assert lines[0].startswith(("python -m robustlab.train: error: ", "robustlab.train: error: ")), lines[0]
    assert fragment in lines[0], lines[0]
    assert result["stdout"] == ""


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line(case, forked_results, paths):
    if case not in forked_results:
        pytest.skip("needs the real CIFAR-10 (see the cifar10_dir fixture)")
    assert_one_line_usage_error(forked_results[case], expected_fragment(case, paths))


def test_plain_subprocess_agrees_with_the_forked_runner(launched, forked_results, paths):
    result = launched[1]["plain"].result()
    assert_one_line_usage_error(result, expected_fragment(PLAIN_CASE, paths))
    assert result == forked_results[PLAIN_CASE]


def test_tiny_successful_run_prints_metrics_and_writes_a_record(launched, paths):
    if "success" not in launched[1]:
        pytest.skip("needs the real CIFAR-10 (see the cifar10_dir fixture)")
    result = launched[1]["success"].result()
    assert result["code"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]
    lines = result["stdout"].splitlines()
    assert len(lines) == 2 and lines[0].startswith("test_acc=") and lines[1].startswith("record: ")
    metrics = dict(item.split("=") for item in lines[0].split())
    assert {"test_acc", "test_loss", "test_cost", "test_acc_tta", "test_ece", "test_acc_best"} <= metrics.keys()
    assert 0.0 <= float(metrics["test_acc"]) <= 1.0
    record_file = Path(lines[1].removeprefix("record: "))
    assert record_file.parent == paths["root"] / "ok" / "records" and record_file.is_file()
    record = json.loads(record_file.read_text())
    assert record["data"]["train"] == 200 and record["data"]["val"] == 100 and record["data"]["test"] == 200
    assert len(record["history"]) == 1 and record["config"]["model"] == "tiny_cnn"
    assert f"{record['metrics']['test_acc']:.4f}" == metrics["test_acc"]
