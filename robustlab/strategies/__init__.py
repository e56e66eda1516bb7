"""Training strategies: objects that own the network(s) and turn a batch into a loss."""
from robustlab.strategies.base import StepOutput, Strategy
from robustlab.strategies.cross_entropy import CrossEntropy, LabelSmoothing

__all__ = ["CrossEntropy", "LabelSmoothing", "StepOutput", "Strategy"]
