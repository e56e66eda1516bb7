"""Corruptions for robustness studies: synthetic, instance-dependent and real (CIFAR-N) label noise, and
CIFAR-10-C-style input corruptions."""
from robustlab.corruptions.dataset_noise import NOISE_TYPE_HELP, dataset_noisy_labels, parse_noise_type
from robustlab.corruptions.human import LABEL_SETS, PUBLISHED_RATES, human_labels
from robustlab.corruptions.inputs import (
    BENCHMARK_CORRUPTIONS,
    CORRUPTION_FAMILIES,
    EXTRA_CORRUPTIONS,
    INPUT_CORRUPTIONS,
    MAX_SEVERITY,
    SEVERITY_PARAMS,
    corrupt,
    corruption_family,
    list_input_corruptions,
)
from robustlab.corruptions.instance import instance_dependent_labels
from robustlab.corruptions.labels import (
    CIFAR10_ASYMMETRIC_MAP,
    CIFAR100_FINE_TO_COARSE,
    NOISE_TYPES,
    NoiseReport,
    asymmetric_class_map,
    corrupt_labels,
    corrupt_with_transition,
    list_label_noises,
    noise_report,
    transition_matrix,
)

__all__ = [
    "BENCHMARK_CORRUPTIONS",
    "CORRUPTION_FAMILIES",
    "EXTRA_CORRUPTIONS",
    "CIFAR10_ASYMMETRIC_MAP",
    "CIFAR100_FINE_TO_COARSE",
    "INPUT_CORRUPTIONS",
    "LABEL_SETS",
    "MAX_SEVERITY",
    "NOISE_TYPES",
    "NOISE_TYPE_HELP",
    "PUBLISHED_RATES",
    "NoiseReport",
    "SEVERITY_PARAMS",
    "asymmetric_class_map",
    "corrupt",
    "corrupt_labels",
    "corruption_family",
    "corrupt_with_transition",
    "dataset_noisy_labels",
    "human_labels",
    "instance_dependent_labels",
    "list_input_corruptions",
    "list_label_noises",
    "noise_report",
    "parse_noise_type",
    "transition_matrix",
]
