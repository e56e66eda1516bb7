"""Corruptions for robustness studies: synthetic label noise and CIFAR-10-C-style input corruptions."""
from robustlab.corruptions.inputs import (
    INPUT_CORRUPTIONS,
    MAX_SEVERITY,
    SEVERITY_PARAMS,
    corrupt,
    list_input_corruptions,
)
from robustlab.corruptions.labels import (
    CIFAR10_ASYMMETRIC_MAP,
    CIFAR100_FINE_TO_COARSE,
    NOISE_TYPES,
    NoiseReport,
    asymmetric_class_map,
    corrupt_labels,
    list_label_noises,
    noise_report,
    transition_matrix,
)

__all__ = [
    "CIFAR10_ASYMMETRIC_MAP",
    "CIFAR100_FINE_TO_COARSE",
    "INPUT_CORRUPTIONS",
    "MAX_SEVERITY",
    "NOISE_TYPES",
    "NoiseReport",
    "SEVERITY_PARAMS",
    "asymmetric_class_map",
    "corrupt",
    "corrupt_labels",
    "list_input_corruptions",
    "list_label_noises",
    "noise_report",
    "transition_matrix",
]
