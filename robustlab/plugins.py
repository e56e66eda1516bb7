"""Plug-ins: code of the user's own that registers strategies (or models) before a command resolves names.

Two ways in:

- `--plugin PATH.py` or `--plugin package.module` (repeatable, every command): the file or module is
  imported while the command line is parsed, so its `@register_strategy` classes are known to
  `--strategy`, `--methods` and `--list-strategies`;
- an installed package declares an entry point in the group `robustlab.strategies`
  (pyproject.toml: `[project.entry-points."robustlab.strategies"] mine = "my_pkg.strategies"`); the
  registry loads every such entry point the first time it lists or looks up strategies.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from robustlab.errors import UsageError

ENTRY_POINT_GROUP = "robustlab.strategies"


def _is_path(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def load_plugin(spec: str):
    """Import `spec` (a .py file or an importable module name) once; returns the module.
    UsageError when the file or the module itself does not exist."""
    spec = spec.strip()
    if not spec:
        raise UsageError("--plugin needs a .py file or a module name")
    if _is_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise UsageError(f"--plugin {spec}: no such file")
        name = f"robustlab_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"--plugin {spec}: not an importable Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and (spec == exc.name or spec.startswith(exc.name + ".")):
            raise UsageError(f"--plugin {spec}: no module named {exc.name!r} (give a .py path or an importable "
                             "module name)") from None
        raise


def load_plugins(specs) -> list:
    return [load_plugin(s) for s in specs or []]


class PluginAction(argparse.Action):
    """argparse action for --plugin: imports the plug-in as soon as the option is read (so it is
    loaded before anything resolves a strategy name) and collects the specs in a list. A plug-in that
    fails to import (a syntax error, a name already taken) is one line naming it and the error."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            load_plugin(values)
        except UsageError as exc:
            parser.error(str(exc))
        except Exception as exc:
            parser.error(f"--plugin {values} failed to import: {type(exc).__name__}: {exc}")
        items = list(getattr(namespace, self.dest, None) or [])
        setattr(namespace, self.dest, [*items, values])


def add_plugin_arg(parser) -> None:
    parser.add_argument("--plugin", action=PluginAction, default=[], metavar="FILE.py|MODULE", dest="plugins",
                        help="import a file or module that registers strategies (@register_strategy) before "
                             "names are resolved (repeatable); installed packages can instead declare an entry "
                             f"point in the group {ENTRY_POINT_GROUP!r}")


def entry_point_modules():
    """The entry points of group `robustlab.strategies` (importlib.metadata)."""
    import importlib.metadata

    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
