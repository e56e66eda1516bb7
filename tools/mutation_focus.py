"""Mutation testing of a few modules judged by a few test files: a quick, conservative score.

    python tools/mutation_focus.py robustlab/strategies/sce.py --tests tests/test_robust_losses.py [--jobs 2]

`make mutation` judges every mutant with the whole non-slow suite; this runs the same mutmut
configuration in build/mutation/<name>/ (links to the sources, its own pyproject.toml and mutants/)
with `only_mutate` and the test selection replaced, so a module's own tests judge it in minutes.
Other tests can only kill more mutants: the score printed is a lower bound of the full one.
Survivors: `cd build/mutation/<name> && mutmut results` / `mutmut show NAME`.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINKED = ("robustlab", "tests", "examples", "studies", "tools")


def focused_pyproject(text: str, modules: list[str], tests: list[str]) -> str:
    """pyproject.toml with [tool.mutmut]'s only_mutate and test selection replaced."""
    only, n1 = re.subn(r"(?ms)^only_mutate = \[.*?\]$", "only_mutate = " + json.dumps(modules), text)
    selection = "pytest_add_cli_args_test_selection = " + json.dumps([*tests, "-m", "not slow"])
    out, n2 = re.subn(r"(?m)^pytest_add_cli_args_test_selection = .*$", selection, only)
    if (n1, n2) != (1, 1):
        raise SystemExit("error: pyproject.toml has no [tool.mutmut] only_mutate / pytest_add_cli_args_test_selection")
    return out


def workdir(modules: list[str], tests: list[str]) -> Path:
    name = "+".join(Path(m).stem for m in modules)
    work = ROOT / "build" / "mutation" / name
    work.mkdir(parents=True, exist_ok=True)
    for entry in LINKED:
        link = work / entry
        if not link.exists():
            link.symlink_to(ROOT / entry, target_is_directory=True)
    (work / "pyproject.toml").write_text(focused_pyproject((ROOT / "pyproject.toml").read_text(), modules, tests))
    return work


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("modules", nargs="+", help="source files to mutate, e.g. robustlab/strategies/sce.py")
    p.add_argument("--tests", nargs="+", required=True, help="test files that judge the mutants")
    p.add_argument("--jobs", type=int, default=2, help="mutants judged in parallel (default 2)")
    args = p.parse_args(argv)
    for path in [*args.modules, *args.tests]:
        if not (ROOT / path).is_file():
            print(f"error: {path} is not a file under {ROOT}", file=sys.stderr)
            return 2
    work = workdir(args.modules, args.tests)
    bin_dir = Path(sys.executable).parent
    run = subprocess.run([str(bin_dir / "mutmut"), "run", "--max-children", str(args.jobs)], cwd=work)
    if run.returncode:
        return run.returncode
    return subprocess.run([sys.executable, str(ROOT / "tools" / "mutation_report.py")], cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
