"""The `--noise-type` grammar: which label-noise names exist and how a value is checked.

Nothing here imports torch or numpy, so a command line can list the valid values in --help and
reject a bad one before loading either. The noise itself lives in `robustlab.corruptions`.
"""
from __future__ import annotations

from robustlab.errors import UsageError, require

NOISE_TYPES: tuple[str, ...] = ("symmetric", "uniform", "pair", "asymmetric")  # synthetic, drawn at a given rate

# label set -> (dataset family, key in the CIFAR-N file)
LABEL_SETS: dict[str, tuple[str, str]] = {
    "aggre": ("cifar10", "aggre_label"),
    "random1": ("cifar10", "random_label1"),
    "random2": ("cifar10", "random_label2"),
    "random3": ("cifar10", "random_label3"),
    "worst": ("cifar10", "worse_label"),
    "noisy": ("cifar100", "noisy_label"),
}

NOISE_TYPE_HELP = ("symmetric | uniform | pair | asymmetric | instance | human:<aggre|random1|random2|random3|worst> "
                   "(CIFAR-10N) | human:noisy (CIFAR-100N) | file (with --noise-file) | transition:<one of these>")


def check_label_set(label_set: str) -> str:
    """The dataset family ('cifar10' or 'cifar100') of a CIFAR-N label set; UsageError if unknown."""
    require(label_set in LABEL_SETS,
            f"unknown human label set {label_set!r}; CIFAR-10N: aggre, random1, random2, random3, worst; "
            "CIFAR-100N: noisy")
    return LABEL_SETS[label_set][0]


def parse_noise_type(text: str) -> str:
    """Check a --noise-type value; returns it unchanged. UsageError naming the valid forms."""
    text = str(text).strip()
    if text in NOISE_TYPES or text in ("instance", "file"):
        return text
    if text.startswith("human:"):
        check_label_set(text.split(":", 1)[1])
        return text
    if text.startswith("transition:"):
        source = text.split(":", 1)[1]
        require(not source.startswith("transition:"), f"noise type {text!r}: the source of a transition twin "
                                                      "cannot itself be a transition twin")
        parse_noise_type(source)
        return text
    raise UsageError(f"unknown noise type {text!r}; valid: {NOISE_TYPE_HELP}")


def has_nominal_rate(noise_type: str) -> bool:
    """True for the noise drawn at a rate the user gives (synthetic and instance-dependent); label files
    (human:<set>, file) and their transition twins bring their own rate."""
    return noise_type in (*NOISE_TYPES, "instance")
