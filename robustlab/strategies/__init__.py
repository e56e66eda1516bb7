"""Training strategies: objects that own the network(s) and turn a batch into a loss.

Every module of this package is imported here, so its `@register_strategy` classes are known
to `list_strategies()` / `create_strategy()`; a new method is one new file.
"""
import importlib
import pkgutil

from robustlab.strategies.base import NoOptions, StepOutput, Strategy
from robustlab.strategies.registry import (BuildContext, create_strategy, get_strategy, list_strategies, make_config,
                                           register_strategy)

_INFRASTRUCTURE = {"base", "registry"}
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _INFRASTRUCTURE and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

from robustlab.strategies.coteaching import CoTeaching  # noqa: E402
from robustlab.strategies.cross_entropy import CrossEntropy, LabelSmoothing  # noqa: E402
from robustlab.strategies.supcon import (EncoderWithHead, FrozenEncoderClassifier, ProjectionHead,  # noqa: E402
                                         SupConPretrain, SupConViews)

__all__ = ["BuildContext", "CoTeaching", "CrossEntropy", "EncoderWithHead", "FrozenEncoderClassifier", "LabelSmoothing",
           "NoOptions", "ProjectionHead", "StepOutput", "Strategy", "SupConPretrain", "SupConViews", "create_strategy",
           "get_strategy", "list_strategies", "make_config", "register_strategy"]
