"""A name -> constructor registry in the style of timm's `create_model`."""
from __future__ import annotations

from typing import Callable

from torch import nn

from robustlab.errors import UsageError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Decorator: `@register_model` registers under the function name, or under `name`."""

    def add(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _MODELS:
            raise RuntimeError(f"model {key!r} registered twice")
        _MODELS[key] = f
        return f

    return add(fn) if fn is not None else add


def list_models() -> list[str]:
    return sorted(_MODELS)


def require_model(*names: str) -> None:
    """UsageError naming the known models unless every name is registered."""
    unknown = [n for n in names if n not in _MODELS]
    if unknown:
        raise UsageError(f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(list_models())}")


def create_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a registered model. Every model has forward_features/forward_head/num_features."""
    require_model(name)
    if num_classes < 1:
        raise UsageError(f"num_classes must be >= 1, got {num_classes}")
    try:
        return _MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise UsageError(f"model {name!r} does not take option {str(exc).rsplit(' ', 1)[-1]}") from None
