"""tools/mutation_focus.py: the focused configuration keeps everything but what it must replace."""
import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("mutation_focus", ROOT / "tools" / "mutation_focus.py")
mutation_focus = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_focus)


def test_focused_pyproject_replaces_modules_and_tests_only():
    text = (ROOT / "pyproject.toml").read_text()
    full = tomllib.loads(text)
    focused = tomllib.loads(mutation_focus.focused_pyproject(
        text, ["robustlab/strategies/sce.py", "robustlab/strategies/gce.py"], ["tests/test_robust_losses.py"]))
    mut = focused["tool"]["mutmut"]
    assert mut["only_mutate"] == ["robustlab/strategies/sce.py", "robustlab/strategies/gce.py"]
    assert mut["pytest_add_cli_args_test_selection"] == ["tests/test_robust_losses.py", "-m", "not slow"]
    for key in set(full["tool"]["mutmut"]) - {"only_mutate", "pytest_add_cli_args_test_selection"}:
        assert mut[key] == full["tool"]["mutmut"][key], key
    # pytest's own settings (markers) travel with it: the mutants run under the same configuration
    assert focused["tool"]["pytest"] == full["tool"]["pytest"]
    assert focused["project"] == full["project"]


def test_focused_pyproject_refuses_a_file_without_the_mutmut_keys():
    with pytest.raises(SystemExit, match="no \\[tool.mutmut\\] only_mutate"):
        mutation_focus.focused_pyproject("[tool.mutmut]\nonly_mutate = []\n", ["a.py"], ["tests/t.py"])


def test_missing_module_exits_2(capsys):
    assert mutation_focus.main(["robustlab/no_such_module.py", "--tests", "tests/test_mutation_tools.py"]) == 2
    assert "robustlab/no_such_module.py is not a file" in capsys.readouterr().err
