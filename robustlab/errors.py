"""One error type for bad input, and the CLI wrapper that turns it into exit code 2."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class UsageError(ValueError):
    """Bad input from the user: reported as one line, never as a traceback."""


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a command's `main` so that UsageError (and argparse errors) exit 2 with one line."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except UsageError as exc:
            prog = main.__module__
            if prog == "__main__":  # run as `python -m pkg.mod`: report the module's real name
                spec = getattr(sys.modules.get("__main__"), "__spec__", None)
                prog = spec.name if spec is not None else "__main__"
            prog = prog.removesuffix(".__main__")
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted: finished epochs and runs are saved; rerun with --resume", file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper


def require(condition: bool, message: str) -> None:
    """Raise UsageError(message) unless condition holds."""
    if not condition:
        raise UsageError(message)
