"""Training strategies: objects that own the network(s) and turn a batch into a loss."""
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.coteaching import CoTeaching
from robustlab.strategies.cross_entropy import CrossEntropy, LabelSmoothing

# The SupCon classes are imported on first use: pytorch-metric-learning takes seconds to import.
_SUPCON = ("EncoderWithHead", "FrozenEncoderClassifier", "ProjectionHead", "SupConPretrain", "SupConViews")

__all__ = ["CoTeaching", "CrossEntropy", "LabelSmoothing", "StepOutput", "Strategy", *_SUPCON]


def __getattr__(name: str):
    if name in _SUPCON:
        from robustlab.strategies import supcon

        return getattr(supcon, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
