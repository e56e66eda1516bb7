"""What a new user meets first: --help (fast, readable, with defaults), plug-in strategies, the
study options that pass strategy settings and label noise, where figures go, and the tables' notes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustlab.strategies import registry
from studies import noisy_labels

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("noisy_labels", "architectures", "regularization", "robustness", "supcon")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _exit(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def _print_config(main, argv, capsys) -> list[dict]:
    assert _exit(main, argv + ["--print-config"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out.strip()
    if out.startswith("{\n"):  # robustlab.train: one indented object
        return [json.loads(out)]
    return [json.loads(line) for line in out.splitlines()]  # studies: one object a line


# ---- --help: no torch, examples on their own lines, defaults --------------------------------------

_PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
print("EXIT", code, "TORCH" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
"""


@pytest.mark.parametrize("module, argv", [
    ("robustlab.train", ["--help"]), ("studies.noisy_labels", ["--help"]),
    ("robustlab.train", ["--epochs", "0"]),            # a usage error from argparse
    ("robustlab.train", ["--noise-type", "bogus"]),    # the noise-type grammar is checked without torch
    ("studies.noisy_labels", ["--noise", "2"]),
    ("studies.architectures", ["--help"]), ("studies.regularization", ["--help"]),
    ("studies.robustness", ["--help"]), ("studies.supcon", ["--help"]), ("robustlab.labelissues", ["--help"]),
    ("studies.robustness", ["--preset", "nope"]), ("studies.supcon", ["--epochs", "-1"]),
])
def test_help_and_usage_errors_do_not_import_torch(module, argv):
    done = subprocess.run([sys.executable, "-c", _PROBE, module, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    expected = 0 if argv == ["--help"] else 2
    assert last == f"EXIT {expected} NO-TORCH", done.stderr


@pytest.mark.parametrize("module", ["robustlab.train", "studies.noisy_labels"])
def test_help_keeps_each_usage_example_on_its_own_line(module):
    import importlib

    mod = importlib.import_module(module)
    text = mod.build_parser().format_help()
    examples = [line.strip() for line in mod.__doc__.splitlines() if line.strip().startswith("python -m")]
    assert len(examples) >= 2
    lines = [line.strip() for line in text.splitlines()]
    for example in examples:
        assert example in lines  # one example per line, not run together into a paragraph


def test_study_help_shows_each_presets_recipe_values():
    text = _norm(noisy_labels.build_parser().format_help())
    epochs = " / ".join(f"{noisy_labels.preset(p).train.epochs} ({p})" for p in ("quick", "paper", "fast"))
    lr = " / ".join(f"{noisy_labels.preset(p).train.optim.lr:.6g} ({p})" for p in ("quick", "paper", "fast"))
    assert f"--epochs EPOCHS (default: {epochs})" in text
    assert f"--lr LR (default: {lr})" in text
    assert "--train-size TRAIN_SIZE class-balanced training subset size (default: 5000 (quick) / none (paper) / none (fast))" in text


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_offers_noise_type_beside_noise_file_with_its_values(study):
    import importlib

    parser = importlib.import_module(f"studies.{study}").build_parser()
    options = {o: a for a in parser._actions for o in a.option_strings}
    assert "--noise-file" in options and "--noise-type" in options
    text = _norm(parser.format_help())
    for value in ("symmetric", "asymmetric", "instance", "human:noisy", "file (with --noise-file)", "transition:"):
        assert value in text


# ---- label noise in the other studies -----------------------------------------------------------

def test_a_study_applies_its_noise_to_every_arm(tmp_path, capsys):
    from studies import architectures

    base = ["--models", "tiny_cnn,small_cnn", "--out", str(tmp_path)]
    runs = _print_config(architectures.main, base + ["--noise-type", "human:worst"], capsys)
    assert len(runs) == 2
    assert {(r["config"]["data"]["noise_type"], r["config"]["data"]["noisy_val"]) for r in runs} == {("human:worst", True)}
    runs = _print_config(architectures.main, base + ["--noise-type", "pair", "--noise-rate", "0.2", "--clean-val"], capsys)
    assert {(r["config"]["data"]["noise_type"], r["config"]["data"]["noise_rate"], r["config"]["data"]["noisy_val"])
            for r in runs} == {("pair", 0.2, False)}
    clean = _print_config(architectures.main, base, capsys)
    assert {(r["config"]["data"]["noise_type"], r["config"]["data"]["noise_rate"]) for r in clean} == {("symmetric", 0.0)}
    assert _exit(architectures.main, base + ["--noise-type", "symmetric", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == "studies.architectures: error: --noise-type symmetric needs --noise-rate in (0, 1)"


# ---- figures ----------------------------------------------------------------------------------

def test_studies_write_figures_only_to_out_unless_asked(tmp_path):
    from studies.common import output_dirs

    args = noisy_labels.build_parser().parse_args(["--out", str(tmp_path / "res")])
    assert args.figures_dir is None
    assert output_dirs(args) == [tmp_path / "res"]
    args = noisy_labels.build_parser().parse_args(["--out", str(tmp_path / "res"), "--figures-dir", str(tmp_path / "f")])
    assert output_dirs(args) == [tmp_path / "res", tmp_path / "f"]


def test_make_figures_regenerates_every_committed_figure_folder_with_valid_commands():
    import importlib
    import shlex

    done = subprocess.run(["make", "-n", "figures", "FIGURES_ARGS=--collect"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for line in done.stdout.splitlines() if " -m studies." in line]
    folders = sorted(p.name for p in (REPO / "figures").iterdir() if p.is_dir())
    by_study = {}
    for argv in commands:
        study = argv[argv.index("-m") + 1].removeprefix("studies.")
        args = importlib.import_module(f"studies.{study}").build_parser().parse_args(argv[argv.index("-m") + 2:])
        by_study[study] = args
    assert sorted(by_study) == folders
    for study, args in by_study.items():
        assert args.figures_dir == f"figures/{study}" and args.out == f"results/{study}" and args.collect


# ---- plug-ins ---------------------------------------------------------------------------------

@pytest.fixture
def own_registry(monkeypatch):
    """Strategies registered by a test disappear with it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry._REGISTRY


def _plugin_file(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_strategies.py"
    path.write_text(f'''
from dataclasses import dataclass

import torch.nn.functional as F

from robustlab.errors import require
from robustlab.strategies import StepOutput, Strategy, register_strategy

STEPS = []


@dataclass
class BootConfig:
    beta: float = 0.95

    def validate(self):
        require(0 < self.beta <= 1, f"beta must be in (0, 1], got {{self.beta}}")


@register_strategy("{name}")
class SoftBootstrap(Strategy):
    """Soft bootstrapping: cross-entropy to beta * label + (1 - beta) * prediction."""
    Config = BootConfig

    def __init__(self, model, beta):
        super().__init__()
        self.model, self.beta = model, beta

    @classmethod
    def build(cls, config, ctx):
        return cls(ctx.new_model(), config.beta)

    def train_step(self, x, y, idx, epoch):
        logits = self.model(x)
        target = self.beta * F.one_hot(y, logits.shape[1]).float() + (1 - self.beta) * logits.softmax(1).detach()
        STEPS.append(len(y))
        return StepOutput(-(target * logits.log_softmax(1)).sum(1).mean(), logits)
''')
    return path


def test_a_plugin_file_gives_train_a_strategy_it_then_trains(tmp_path, capsys, own_registry, tiny_cifar10):
    from robustlab.train import main

    name = "boot_" + tmp_path.name[-12:].replace("-", "_")
    plugin = _plugin_file(tmp_path / "plugins", name)
    assert _exit(main, ["--strategy", name, "--print-config"]) == 2
    assert f"unknown strategy {name!r}" in capsys.readouterr().err
    (run,) = _print_config(main, ["--plugin", str(plugin), "--strategy", name, "--strategy-arg", "beta=0.8"], capsys)
    assert run["config"]["strategy"] == {"name": name, "options": {"beta": 0.8}}
    assert _exit(main, ["--plugin", str(plugin), "--strategy", name, "--strategy-arg", "beta=2", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == f"robustlab.train: error: strategy {name!r}: beta must be in (0, 1], got 2.0"
    code = main(["--plugin", str(plugin), "--strategy", name, "--data-dir", str(tiny_cifar10.root), "--model", "tiny_cnn",
                 "--epochs", "1", "--batch-size", "25", "--val-size", "0", "--tta", "none", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "out")])
    assert code == 0
    module = next(m for k, m in sys.modules.items() if k.startswith(f"robustlab_plugin_{name}_strategies"))
    assert sum(module.STEPS) == 100  # the plug-in's own train_step saw every training image once
    (record,) = (tmp_path / "out" / "records").glob("*.json")
    assert record.name.startswith(f"{name}-s0-")


def test_a_plugin_module_name_works_for_the_studies_and_their_strategy_args(tmp_path, capsys, own_registry,
                                                                            monkeypatch):
    name = "boot_" + tmp_path.name[-12:].replace("-", "_")
    _plugin_file(tmp_path / "pkg", name)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    runs = _print_config(noisy_labels.main, ["--plugin", f"{name}_strategies", "--methods", f"ce,{name}",
                                             "--strategy-arg", f"{name}.beta=0.5", "--out", str(tmp_path)], capsys)
    arms = {r["config"]["tag"]: r["config"]["strategy"] for r in runs}
    assert arms[f"noisy_{name}"] == {"name": name, "options": {"beta": 0.5}}
    assert set(arms) == {"clean_ce", "noisy_ce", f"noisy_{name}"}
    assert _exit(noisy_labels.main, ["--plugin", "no_such_plugin_module", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        "python -m studies.noisy_labels: error: --plugin no_such_plugin_module: no module named 'no_such_plugin_module' "
        "(give a .py path or an importable module name) (see --help)")
    assert _exit(noisy_labels.main, ["--plugin", str(tmp_path / "missing.py"), "--print-config"]) == 2
    assert f"--plugin {tmp_path / 'missing.py'}: no such file" in capsys.readouterr().err


class _EntryPoint:
    def __init__(self, name, value, load):
        self.name, self.value, self._load, self.loads = name, value, load, 0

    def load(self):
        self.loads += 1
        return self._load()


def test_installed_entry_points_are_loaded_by_the_registry_listing(monkeypatch, own_registry, capsys):
    import importlib.metadata

    from robustlab.strategies import NoOptions, Strategy, register_strategy

    def define():
        @register_strategy("ep_strategy")
        class FromEntryPoint(Strategy):
            """Registered by an installed package."""
            Config = NoOptions
        return FromEntryPoint

    def broken():
        raise ImportError("needs a package that is not installed")

    good, bad = _EntryPoint("mine", "my_pkg.strategies", define), _EntryPoint("old", "old_pkg", broken)
    asked = []

    def entry_points(**kwargs):
        asked.append(kwargs)
        return [good, bad] if kwargs.get("group") == "robustlab.strategies" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert "ep_strategy" in registry.list_strategies()
    assert registry.get_strategy("ep_strategy").__doc__ == "Registered by an installed package."
    registry.list_strategies()
    assert (good.loads, bad.loads, asked) == (1, 1, [{"group": "robustlab.strategies"}])  # once per process
    assert capsys.readouterr().err.strip() == ("warning: strategy plug-in old (old_pkg) was not loaded: ImportError: "
                                               "needs a package that is not installed")
    assert "ep_strategy: Registered by an installed package." in registry.strategy_help()


def test_get_strategy_loads_entry_points_before_calling_a_name_unknown(monkeypatch, own_registry):
    import importlib.metadata

    from robustlab.strategies import NoOptions, Strategy, register_strategy

    def define():
        @register_strategy("ep_lookup")
        class Looked(Strategy):
            """Found on look-up."""
            Config = NoOptions

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [_EntryPoint("x", "x", define)] if kw.get("group") == "robustlab.strategies" else [])
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    assert registry.get_strategy("ep_lookup").name == "ep_lookup"


# ---- the noisy-label study --------------------------------------------------------------------

def test_strategy_args_override_one_methods_preset(tmp_path, capsys):
    from robustlab.strategies import get_strategy

    preset_warmup = get_strategy("dividemix").presets["quick"]["warmup_epochs"]
    runs = _print_config(noisy_labels.main, ["--methods", "dividemix,elr", "--strategy-arg", "dividemix.warmup_epochs=7",
                                             "--strategy-arg", "elr.lam=2.5", "--out", str(tmp_path)], capsys)
    arms = {r["config"]["tag"]: r["config"]["strategy"]["options"] for r in runs}
    assert preset_warmup != 7 and arms["noisy_dividemix"]["warmup_epochs"] == 7
    assert arms["noisy_elr"]["lam"] == 2.5
    assert {k: v for k, v in arms["noisy_dividemix"].items() if k != "warmup_epochs"} == {
        k: v for k, v in get_strategy("dividemix").presets["quick"].items() if k != "warmup_epochs"}


@pytest.mark.parametrize("argv, message", [
    (["--methods", "dividemix", "--strategy-arg", "warmup_epochs=5"],
     "--strategy-arg expects METHOD.KEY=VALUE (e.g. dividemix.warmup_epochs=5), got 'warmup_epochs=5'"),
    (["--methods", "dividemix", "--strategy-arg", "elr.lam=5"],
     "--strategy-arg elr.lam=5: 'elr' is not among the methods of this study (dividemix)"),
    (["--methods", "dividemix", "--strategy-arg", "dividemix.bogus=5"],
     "unknown option(s) bogus for strategy 'dividemix'; known: warmup_epochs, lambda_u, p_threshold, temperature, "
     "alpha, noise_mode, rampup_epochs"),
    (["--methods", "elr", "--strategy-arg", "elr.lam=Infinity"], "strategy 'elr': option lam must be a finite number, got inf"),
    (["--methods", "supcon_pretrain"], "--methods supcon_pretrain: not a noisy-label method (trains no classifier); "
                                       "noisy-label methods: "),
    (["--methods", "ce,elr", "--forget-rate", "0.2"],
     "--forget-rate applies to methods with a forget_rate option (coteach, coteach_plus, jocor); none of ce, elr has one"),
    (["--methods", "ce", "--num-gradual", "5"],
     "--num-gradual applies to methods with a num_gradual option (coteach, coteach_plus, jocor); none of ce has one"),
    (["--clean-val", "--val-size", "0"], "--clean-val needs a validation split (--val-size > 0)"),
    (["--noise-type", "file", "--noise-file", "/no/such/labels.npy"], "--noise-file /no/such/labels.npy: no such file"),
])
def test_bad_study_input_is_one_line_before_anything_is_written(argv, message, tmp_path, capsys, monkeypatch):
    import studies.launcher

    monkeypatch.setattr(studies.launcher, "run_experiment", lambda *a, **k: pytest.fail("a run started"))
    out = tmp_path / "out"
    for extra in (["--print-config"], []):
        assert _exit(noisy_labels.main, argv + extra + ["--out", str(out)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"studies.noisy_labels: error: {message}")
        assert not out.exists()


def test_negative_slurm_gpus_is_refused(tmp_path, capsys):
    assert _exit(noisy_labels.main, ["--slurm-gpus", "-1", "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == ("python -m studies.noisy_labels: error: argument --slurm-gpus: must be "
                                               ">= 0, got -1 (see --help)")


def _run(tag: str, noise_type: str, rate: float, realized: float | None, data=(4000, 500, 2000)):
    from robustlab.config import ExperimentConfig
    from studies.common import Run

    cfg = ExperimentConfig(tag=tag)
    cfg.data.noise_type, cfg.data.noise_rate = noise_type, rate
    record = {"metrics": {"test_acc": 0.5}, "history": [{"epoch": 1, "test_acc": 0.5}],
              "noise": {"realized_rate": realized} if realized is not None else None,
              "data": dict(zip(("train", "val", "test"), data))}
    return Run(cfg, record)


def test_noise_rate_column_is_nominal_and_blank_for_label_files():
    assert noisy_labels.table_row(_run("noisy_ce", "symmetric", 0.3, 0.2995))["noise_rate"] == 0.3
    assert noisy_labels.table_row(_run("noisy_ce", "instance", 0.4, 0.394))["noise_rate"] == 0.4
    human = noisy_labels.table_row(_run("noisy_ce", "human:worst", 0.0, 0.4621))
    assert (human["noise_rate"], human["realized_noise"]) == ("-", 0.4621)
    assert noisy_labels.table_row(_run("noisy_ce", "transition:human:worst", 0.0, 0.41))["noise_rate"] == "-"
    clean = noisy_labels.table_row(_run("clean_ce", "symmetric", 0.0, None))
    assert (clean["noise_type"], clean["noise_rate"], clean["realized_noise"]) == ("none", 0.0, 0.0)


def test_table_note_gives_the_split_sizes():
    args = noisy_labels.build_parser().parse_args([])
    runs = [_run("clean_ce", "symmetric", 0.0, None), _run("noisy_ce", "symmetric", 0.3, 0.3)]
    note = noisy_labels.table_note(runs, noisy_labels.preset("quick"), args)
    assert "4,000 train / 500 validation / 2,000 test images" in note


# ---- robustlab.train ---------------------------------------------------------------------------

def test_train_validates_on_noisy_labels_unless_clean_val(capsys):
    from robustlab.train import main

    (run,) = _print_config(main, ["--noise-rate", "0.3"], capsys)
    assert run["config"]["data"]["noisy_val"] is True
    (run,) = _print_config(main, ["--noise-rate", "0.3", "--clean-val"], capsys)
    assert run["config"]["data"]["noisy_val"] is False


@pytest.mark.parametrize("argv, message", [
    (["--clean-val", "--val-size", "0"], "--clean-val needs a validation split (--val-size > 0)"),
    (["--noise-type", "file", "--noise-file", "/no/such/file.npy"], "--noise-file /no/such/file.npy: no such file"),
    (["--strategy", "elr", "--strategy-arg", "lam=Infinity"], "strategy 'elr': option lam must be a finite number, got inf"),
    (["--strategy", "elr", "--strategy-arg", "beta=NaN"], "strategy 'elr': option beta must be a finite number, got nan"),
])
def test_bad_train_input_exits_2_at_print_config(argv, message, capsys):
    from robustlab.train import main

    assert _exit(main, argv + ["--print-config"]) == 2
    assert capsys.readouterr().err.strip() == f"robustlab.train: error: {message}"


def test_non_finite_float_options_are_refused_by_every_strategy_config():
    from robustlab.errors import UsageError
    from robustlab.strategies import make_config

    for value in (float("inf"), float("-inf"), float("nan"), "Infinity", "-Infinity", "NaN"):
        with pytest.raises(UsageError, match="option lam must be a finite number"):
            make_config("elr", {"lam": value})
    assert make_config("elr", {"lam": 1e300}).lam == 1e300


@pytest.mark.parametrize("path, value, message", [
    (("train", "epochs"), "ten", "config.train.epochs must be int, got 'ten'"),
    (("strategy",), "ce", "config.strategy must be a JSON object, got 'ce'"),
    (("model_kwargs",), [1, 2], "config.model_kwargs must be dict, got [1, 2]"),
    (("data", "noise_rate"), "x", "config.data.noise_rate must be float, got 'x'"),
    (("train", "optim", "milestones"), 5, "config.train.optim.milestones must be list[int], got 5"),
    (("train", "optim", "triangle"), [1, 2], "config.train.optim.triangle must be tuple[float, float, float], got [1, 2]"),
    (("augment",), None, "config.augment must be a JSON object, got None"),
    (("strategy", "options"), [1], "config.strategy.options must be dict, got [1]"),
    (("seed",), 1.5, "config.seed must be int, got 1.5"),
    (("data", "val_size"), -3, "config.data.val_size must be >= 0, got -3"),
    (("data", "noise_rate"), 1.5, "config.data.noise_rate must be in [0, 1), got 1.5"),
    (("data", "noise_type"), "bogus", "unknown noise type 'bogus'"),
])
def test_ill_typed_record_fields_are_one_line(path, value, message, tmp_path, capsys):
    from robustlab.train import main

    (run,) = _print_config(main, ["--epochs", "2"], capsys)
    node = run["config"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    record = tmp_path / "record.json"
    record.write_text(json.dumps(run))
    assert _exit(main, ["--from-record", str(record), "--print-config"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"robustlab.train: error: {record}: {message}")
    assert all(line.startswith("warning:") for line in err[:-1])


# ---- noise export and bench ------------------------------------------------------------------

def test_noise_export_to_a_folder_fails_before_any_work_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from robustlab import noise

    monkeypatch.setattr(noise, "export_rows", lambda *a, **k: pytest.fail("labels computed before --out was checked"))
    target = tmp_path / "labels"
    target.mkdir()
    assert noise.main(["export", "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip() == (f"robustlab.noise: error: --out {target} is a folder; name the file to "
                                               f"write, e.g. {target / 'labels.csv'}")
    assert list(tmp_path.rglob("*")) == [target]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert noise.main(["export", "--out", str(blocker / "labels.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"robustlab.noise: error: --out {blocker / 'labels.csv'}: {blocker} is a file, not a folder"


def test_noise_export_write_is_atomic(tmp_path, monkeypatch):
    from robustlab import fileio, noise

    rows = [(i, "", i % 10, (i + 1) % 10, "train") for i in range(50)]
    noise.write_csv(tmp_path / "labels.csv", rows)
    lines = (tmp_path / "labels.csv").read_text().splitlines()
    assert lines[0] == "index,path,clean,noisy,split" and lines[1] == "0,,0,1,train" and len(lines) == 51

    def fail(fd, *a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", fail)
    from robustlab.errors import UsageError

    with pytest.raises(UsageError, match="cannot write .*No space left on device"):
        noise.write_csv(tmp_path / "other.csv", rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]  # no other.csv, no temporary file


@pytest.mark.parametrize("value, message", [
    ("abc", "expected comma-separated image counts or 'none', got 'abc'"),
    ("-100", "image counts must be >= 1, got '-100'"),
    ("5000,0", "image counts must be >= 1, got '5000,0'"),
])
def test_bench_scaling_is_checked_when_parsed(value, message, capsys, monkeypatch):
    from robustlab.bench import throughput
    from robustlab.bench.cli import build_parser, main

    monkeypatch.setattr(throughput, "bench_images", lambda *a, **k: pytest.fail("data loaded before --scaling was checked"))
    assert _exit(main, ["--scaling", value]) == 2
    assert capsys.readouterr().err.strip() == f"python -m robustlab.bench: error: argument --scaling: {message} (see --help)"
    assert build_parser().parse_args(["--scaling", "none"]).scaling == []
    assert build_parser().parse_args(["--scaling", "100,200"]).scaling == [100, 200]


def test_bench_json_out_is_checked_before_timing(tmp_path, capsys, monkeypatch):
    from robustlab.bench import cli, throughput

    monkeypatch.setattr(throughput, "bench_images", lambda *a, **k: pytest.fail("data loaded before --json-out was checked"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["--json-out", str(blocker / "r.json"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (f"robustlab.bench.cli: error: --json-out {blocker / 'r.json'}: {blocker} "
                                               "is a file, not a folder")
    assert cli.main(["--json-out", str(tmp_path), "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--json-out {tmp_path} is a folder; name the file to write, e.g. "
                                                    f"{tmp_path / 'bench.json'}")


def test_split_sizes_lists_every_size_the_runs_had():
    from studies.common import split_sizes

    runs = [_run("a", "symmetric", 0.0, None, (1000, 0, 500)), _run("b", "symmetric", 0.0, None, (45000, 5000, 10000)),
            _run("c", "symmetric", 0.0, None, (1000, 0, 500))]
    assert split_sizes(runs) == "1,000|45,000 train / 0|5,000 validation / 500|10,000 test images"
    assert split_sizes([_run("a", "symmetric", 0.0, None, (1, 2, 3))]) == "1 train / 2 validation / 3 test images"


def test_a_plugin_that_fails_to_import_is_one_line(tmp_path, capsys, own_registry):
    from robustlab.train import main

    broken = tmp_path / "broken.py"
    broken.write_text("def oops(:\n")
    assert _exit(main, ["--plugin", str(broken), "--print-config"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"python -m robustlab.train: error: --plugin {broken} failed to import: SyntaxError")
    taken = tmp_path / "taken.py"
    taken.write_text("from robustlab.strategies import NoOptions, Strategy, register_strategy\n\n"
                     "@register_strategy('ce')\nclass Mine(Strategy):\n    Config = NoOptions\n")
    assert _exit(main, ["--plugin", str(taken), "--print-config"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m robustlab.train: error: --plugin {taken} failed to import: ValueError: strategy name 'ce' is taken "
        "by robustlab.strategies.cross_entropy.CrossEntropy (see --help)")
    assert not any(k.startswith("robustlab_plugin_broken_") or k.startswith("robustlab_plugin_taken_") for k in sys.modules)
