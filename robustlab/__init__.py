"""robustlab: robustness and representation-learning studies for CIFAR classification."""

__version__ = "0.1.0"
