"""Strategies by name: `@register_strategy("name")`, `list_strategies()`, `create_strategy(name, ...)`.

Every module in `robustlab.strategies` registers its classes on import; a strategy defined in a
user's own file registers the same way and is then usable by `robustlab.train --strategy NAME`
and by every study once that file is loaded: `--plugin FILE.py|MODULE` on any command, or an
entry point of group `robustlab.strategies` in an installed package, which the listing and the
look-up here load the first time they run (`robustlab.plugins`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustlab.errors import UsageError, require
from robustlab.strategies.base import Strategy

_REGISTRY: dict[str, type[Strategy]] = {}


@dataclass
class BuildContext:
    """What a strategy may use to build itself, besides its own options."""

    new_model: Callable[[], nn.Module]   # a fresh, independently initialised network per call
    num_classes: int
    num_train: int = 0                    # training-set size: per-sample state is indexed by 0..num_train-1
    noise_rate: float = 0.0               # realised label-noise rate of the training set (an oracle prior)
    clean_train_labels: torch.Tensor | None = None  # only to *measure* selection precision, never to train
    noise_transition: Any = None          # (C, C) empirical T of the realised noise (rows clean, cols noisy): an oracle
    results_dir: Path | None = None       # where other runs of the study live (e.g. a pretrained encoder)
    experiment: Any = None                # the ExperimentConfig, for strategies that check other runs against it
    distributed: bool = False
    # the noise rate estimated from the noisy training labels alone (computed on first call, cached);
    # None where no estimate can be made (no data or results folder, e.g. create_strategy without a run)
    estimate_noise_rate: Callable[[], float] | None = None
    extras: dict = field(default_factory=dict)


def register_strategy(name: str):
    """Class decorator: make `cls` available as `name`."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"@register_strategy({name!r}) needs a Strategy subclass, got {cls!r}")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"strategy name {name!r} is taken by {old.__module__}.{old.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every entry point of group `robustlab.strategies` once; one that fails to load is
    reported as a warning and skipped (its strategies stay unknown)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from robustlab.plugins import entry_point_modules

    for ep in entry_point_modules():
        try:
            ep.load()
        except Exception as exc:  # a broken installed plug-in must not break every command
            print(f"warning: strategy plug-in {ep.name} ({ep.value}) was not loaded: {type(exc).__name__}: {exc}",
                  file=sys.stderr)


def list_strategies() -> list[str]:
    load_entry_points()
    return sorted(_REGISTRY)


def get_strategy(name: str) -> type[Strategy]:
    if name not in _REGISTRY:
        load_entry_points()
    if name not in _REGISTRY:
        raise UsageError(f"unknown strategy {name!r}; known: {', '.join(list_strategies())}")
    return _REGISTRY[name]


def config_fields(name: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(get_strategy(name).Config)}


def _coerce(name: str, key: str, value, annotation):
    """`value` as the field's declared type (ints are accepted for floats; strings parsed as JSON);
    a float option must be finite (JSON's Infinity and NaN are refused)."""
    hint = annotation
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    if isinstance(value, str) and str not in allowed:
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UsageError(f"strategy {name!r}: option {key} must be a finite number, got {value!r}")
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if t in (bool, str) and isinstance(value, t):
            return value
        if typing.get_origin(t) in (tuple, list) and isinstance(value, (list, tuple)):
            return typing.get_origin(t)(value)
        if t is Any:
            return value
    names = " | ".join(getattr(t, "__name__", str(t)) for t in allowed)
    raise UsageError(f"strategy {name!r}: option {key} must be {names}, got {value!r}")


def make_config(name: str, options: dict | None = None):
    """The strategy's validated config from keyword options; unknown or ill-typed options are a
    UsageError naming the option and listing the known ones."""
    cls = get_strategy(name)
    known = config_fields(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(known))
    require(not unknown, f"unknown option(s) {', '.join(unknown)} for strategy {name!r}; "
                         f"known: {', '.join(known) or '(none)'}")
    hints = typing.get_type_hints(cls.Config)
    values = {k: _coerce(name, k, v, hints[k]) for k, v in options.items()}
    config = cls.Config(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except UsageError as exc:
            raise UsageError(f"strategy {name!r}: {exc}") from None
    return config


def create_strategy(name: str, new_model: Callable[[], nn.Module] | nn.Module | None = None, *,
                    context: BuildContext | None = None, num_classes: int | None = None, num_train: int = 0,
                    noise_rate: float = 0.0, **options) -> Strategy:
    """Build strategy `name` with `options` (its Config's fields).

    `new_model` is a zero-argument factory (called once per network the strategy owns) or, for
    single-network strategies, a model. `context` gives the rest; without it one is made from
    `num_classes`, `num_train` (the training-set size, for per-sample state such as ELR's memory)
    and `noise_rate` (the prior that forget rates default to).
    """
    cls = get_strategy(name)
    config = make_config(name, options)
    if context is None:
        require(new_model is not None, "create_strategy needs a model factory (new_model) or a context")
        if isinstance(new_model, nn.Module):
            module, used = new_model, []

            def factory():
                require(not used, f"strategy {name!r} needs more than one network; pass a model factory "
                                  "(a function returning a new model) instead of a model")
                used.append(True)
                return module
        else:
            factory = new_model
        context = BuildContext(new_model=factory, num_classes=num_classes or 0, num_train=num_train,
                               noise_rate=noise_rate)
    strategy = cls.build(config, context)
    if strategy.config is None:
        strategy.config = config
    return strategy


def strategy_help() -> str:
    """One line per strategy: name, first docstring line, options with defaults."""
    lines = []
    for name in list_strategies():
        cls = _REGISTRY[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        opts = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.Config))
        lines.append(f"{name}: {doc[0] if doc else cls.__name__}" + (f" [{opts}]" if opts else ""))
    return "\n".join(lines)


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"
