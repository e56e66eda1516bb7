"""Mutation score per module from the last `mutmut run` (reads mutants/**/*.py.meta).

    python tools/mutation_report.py [--min 90]

Prints killed / survived / other (no tests, timeout, not checked, ...) and the score
killed / (killed + survived + no tests) for each mutated module, and exits 1 when a module is below --min.
Timeouts count as killed, as mutmut counts them.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code


def module_counts(root: Path = Path("mutants")) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for meta in sorted(root.rglob("*.py.meta")):
        codes = json.loads(meta.read_text()).get("exit_code_by_key", {})
        if codes:
            module = str(meta.relative_to(root)).removesuffix(".meta")
            out[module] = Counter("killed" if status_by_exit_code[c] == "timeout" else status_by_exit_code[c]
                                  for c in codes.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--min", type=float, default=None, help="fail when a module's score (%%) is below this")
    args = p.parse_args(argv)
    counts = module_counts()
    if not counts:
        print("no mutation results under mutants/: run `make mutation` (or `mutmut run`) first", file=sys.stderr)
        return 2
    low = []
    print(f"{'module':48} {'killed':>7} {'survived':>8} {'no tests':>8} {'other':>6} {'score':>7}")
    for module, c in counts.items():
        other = sum(c.values()) - c["killed"] - c["survived"] - c["no tests"]
        judged = c["killed"] + c["survived"] + c["no tests"]
        score = 100.0 * c["killed"] / judged if judged else float("nan")
        print(f"{module:48} {c['killed']:7d} {c['survived']:8d} {c['no tests']:8d} {other:6d} {score:6.1f}%")
        if args.min is not None and not score >= args.min:
            low.append(module)
    if low:
        print(f"below {args.min}%: {', '.join(low)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
