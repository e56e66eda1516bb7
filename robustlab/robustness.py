"""Corruption robustness of classifiers, reported as the field does (Hendrycks & Dietterich, ICLR 2019).

Evaluation: every model sees the same corrupted images, either generated on the fly
(`generated_corruptions`: `robustlab.corruptions` at severities 1-5, a generator seeded per
corruption and severity) or read from the released CIFAR-10-C / CIFAR-100-C files
(`released_corruptions`: DIR/<corruption>.npy, (5 N, 32, 32, 3) uint8, severities 1-5 in
consecutive blocks of N, labels in DIR/labels.npy). `evaluate_corruptions` returns, per model,
accuracy and ECE on the clean images and for every corruption x severity.

Metrics: `mean_corruption_accuracy` (mean over corruptions x severities; the headline uses the
15 benchmark corruptions, the 4 extras are reported apart), `corruption_errors` (CE_c = sum_s E_s,c
/ sum_s E^base_s,c, mCE = mean_c CE_c, relative CE_c = sum_s (E_s,c - E_clean) / sum_s (E^base_s,c
- E^base_clean), relative mCE = mean_c), `robustness_rows` (one row per model and seed, the
baseline matched seed by seed) and `summarize_over_seeds` (means and sample std). The paper
normalizes by AlexNet; here the baseline is a named model of the same study, so these mCE values
are relative to that model and are not the published mCE.

Calibration: `calibration_summary` gives ECE/NLL and, with validation logits, the temperature
(Guo et al. 2017) and ECE/NLL after temperature scaling.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from robustlab.calibration import apply_temperature, expected_calibration_error, fit_temperature, negative_log_likelihood
from robustlab.corruptions.inputs import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, MAX_SEVERITY, corrupt
from robustlab.seeds import mixed_seed
from robustlab.data.augment import normalize
from robustlab.errors import UsageError, require

EVAL_BATCH = 500
SEVERITIES = tuple(range(1, MAX_SEVERITY + 1))
BASELINE_NOTE = ("mCE and relative mCE are normalized by the baseline model {baseline!r} of this table, matched seed by "
                 "seed (Hendrycks & Dietterich 2019 use AlexNet), so they are not the published mCE numbers.")
SELF_BASELINE_NOTE = ("Only one model is evaluated, so mCE and relative mCE are relative to that model itself (1 by "
                      "construction, or blank where it has no corruption error); evaluate a second model to compare.")


def evaluation_note(test_sizes: Sequence[int], capped_at: int | None, released: str | Path | None,
                    corruption_seed: int, models: Sequence[str], baseline: str) -> str:
    """The table note: N (the test images per run, each evaluated clean and under every corruption
    and severity, and the cap that chose them), where the corrupted images come from, and what the
    mCE is relative to (the model itself when it is the only one)."""
    n = "/".join(str(v) for v in sorted(set(test_sizes)))
    cap = (f" (the run's test split, or a class-balanced subset of {capped_at} when it is larger: --test-size, "
           "the quick preset's default 500)" if capped_at else " (the run's whole test split)")
    source = (f"the same images' rows of every severity block of the released files in {released}" if released
              else f"generated from the same images, corruption seed {corruption_seed}")
    single = len(set(models)) == 1
    return (f"N = {n} test images per run{cap}, each evaluated clean and under every corruption at severities 1-5 "
            f"({source}). " + (SELF_BASELINE_NOTE if single else BASELINE_NOTE.format(baseline=baseline)))


@dataclass
class ModelSpec:
    """A classifier and the normalization its inputs need."""
    model: torch.nn.Module
    mean: Sequence[float]
    std: Sequence[float]


@dataclass
class CorruptionScores:
    """One model: clean and per (corruption, severity) accuracy and ECE."""
    clean_acc: float
    clean_ece: float
    acc: dict[tuple[str, int], float] = field(default_factory=dict)
    ece: dict[tuple[str, int], float] = field(default_factory=dict)


# A corruption source yields (corruption, severity, batches) where batches is an iterable of
# (float images in [0, 1] (n, C, H, W) on the device, labels (n,)).
Batches = Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]
Source = Iterator[tuple[str, int, Batches]]


# ---- sources of corrupted images --------------------------------------------------------------

def corruption_generator(name: str, severity: int, seed: int, device) -> torch.Generator:
    """The generator of corruption `name` at `severity`: the same images for every model."""
    g = torch.Generator(device=device)
    g.manual_seed(mixed_seed(seed, zlib.crc32(f"{name}/{severity}".encode())))
    return g


def _uint8_batches(images: torch.Tensor, labels: torch.Tensor, device, batch: int):
    for i in range(0, len(images), batch):
        yield images[i:i + batch].to(device).float().div_(255), labels[i:i + batch].to(device)


def generated_corruptions(images: torch.Tensor, labels: torch.Tensor, corruptions: Sequence[str], seed: int = 0,
                          device="cpu", batch: int = EVAL_BATCH) -> Source:
    """Corrupt uint8 images (N, C, H, W) on the device with every corruption at severities 1-5."""
    device = torch.device(device)
    for name in corruptions:
        for severity in SEVERITIES:
            def batches(name=name, severity=severity):
                g = corruption_generator(name, severity, seed, device)
                for x, y in _uint8_batches(images, labels, device, batch):
                    yield corrupt(x, name, severity, g), y
            yield name, severity, batches


def load_released(directory: str | Path, name: str, limit: int | None = None,
                  num_classes: int | None = None, indices: Sequence[int] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """DIR/<name>.npy and DIR/labels.npy of a CIFAR-10-C / CIFAR-100-C release.

    Returns uint8 images (5 n, 3, H, W), labels (5 n,) and n, the images per severity: the rows
    `indices` of every severity block of N (the release is the test set in its original order, so
    these are the corrupted versions of test images `indices`), else the first `limit` of each
    block, else all N. Files are read with allow_pickle=False; a missing or malformed file, or an
    index beyond N, is a UsageError naming it."""
    directory = Path(directory)
    images = _load_npy(directory / f"{name}.npy")
    require(images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (32, 32, 3) and len(images) > 0
            and len(images) % MAX_SEVERITY == 0,
            f"{directory / f'{name}.npy'} must hold uint8 32x32 RGB images of shape (5*N, 32, 32, 3), got {images.dtype} "
            f"{images.shape}")
    n = len(images) // MAX_SEVERITY
    labels = _load_npy(directory / "labels.npy")
    require(labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer) and len(labels) in (n, MAX_SEVERITY * n),
            f"{directory / 'labels.npy'} must hold integer labels of shape ({MAX_SEVERITY * n},) or ({n},) to match "
            f"{name}.npy, got {labels.dtype} {labels.shape}")
    if num_classes is not None:
        require(int(labels.min()) >= 0 and int(labels.max()) < num_classes,
                f"{directory / 'labels.npy'} holds labels outside 0..{num_classes - 1}, the evaluated models' classes "
                "(CIFAR-100-C files for a CIFAR-10 model?)")
    if len(labels) == n:
        labels = np.tile(labels, MAX_SEVERITY)
    if indices is None:
        indices = np.arange(n if limit is None else min(n, limit))
    indices = np.asarray(indices, dtype=np.int64)
    require(len(indices) > 0 and int(indices.min()) >= 0 and int(indices.max()) < n,
            f"{directory / f'{name}.npy'} holds {n} images per severity, fewer than the test set evaluated "
            f"(image {int(indices.max()) if len(indices) else 0} asked for): the released files must be the whole test set")
    rows = np.concatenate([s * n + indices for s in range(MAX_SEVERITY)])
    x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels[rows].astype(np.int64)), len(indices)


def _load_npy(path: Path) -> np.ndarray:
    require(path.is_file(), f"{path} does not exist")
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"{path} is not a readable .npy array ({exc})") from None


def released_corruptions(directory: str | Path, corruptions: Sequence[str], device="cpu", batch: int = EVAL_BATCH,
                         limit: int | None = None, num_classes: int | None = None, indices: Sequence[int] | None = None,
                         test_labels: torch.Tensor | None = None) -> Source:
    """The released files' images, severity by severity (each file is checked before it is used):
    rows `indices` of each severity block (see load_released). With `test_labels` (the labels of
    test images `indices`), every block's labels must equal them: the clean and the corrupted
    images are then the same images."""
    for name in corruptions:
        images, labels, n = load_released(directory, name, limit, num_classes, indices)
        for severity in SEVERITIES:
            block = slice((severity - 1) * n, severity * n)
            if test_labels is not None:
                differ = (labels[block] != test_labels.cpu()).nonzero()
                require(len(differ) == 0,
                        f"{Path(directory) / 'labels.npy'} does not match the run's test labels (severity {severity}, "
                        f"evaluated image {int(differ[0]) if len(differ) else 0}): the released files are the test set "
                        "in its original order, and so must the run's test set be (the torchvision pickles are; an "
                        "image-folder copy is in class order)")

            def batches(block=block, images=images, labels=labels):
                yield from _uint8_batches(images[block], labels[block], device, batch)
            yield name, severity, batches


# ---- evaluation -------------------------------------------------------------------------------

@torch.no_grad()
def predict_logits(spec: ModelSpec, x: torch.Tensor, autocast=None) -> torch.Tensor:
    """Float logits of [0, 1] images under the model's normalization (inside `autocast()` when given)."""
    with autocast() if autocast else torch.autocast(x.device.type, enabled=False):
        return spec.model(normalize(x, spec.mean, spec.std)).float()


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    acc = (logits.argmax(1) == labels).float().mean().item()
    return acc, expected_calibration_error(logits, labels, from_logits=True)


def evaluate_corruptions(models: dict[str, ModelSpec], images: torch.Tensor, labels: torch.Tensor, source: Source,
                         device="cpu", batch: int = EVAL_BATCH, autocast=None,
                         on_logits: Callable[[str, str, int, torch.Tensor, torch.Tensor], None] | None = None
                         ) -> dict[str, CorruptionScores]:
    """Clean accuracy/ECE on uint8 `images` and accuracy/ECE for each (corruption, severity) of
    `source`; each corrupted batch is made once and shown to every model."""
    require(len(models) > 0, "no models to evaluate")
    device = torch.device(device)
    clean: dict[str, list] = {label: [] for label in models}
    seen = []
    for x, y in _uint8_batches(images, labels, device, batch):
        seen.append(y)
        for label, spec in models.items():
            clean[label].append(predict_logits(spec, x, autocast))
    y_clean = torch.cat(seen)
    out = {}
    for label in models:
        logits = torch.cat(clean[label])
        out[label] = CorruptionScores(*_scores(logits, y_clean))
        if on_logits:
            on_logits(label, "clean", 0, logits, y_clean)
    for name, severity, batches in source:
        logits = {label: [] for label in models}
        ys = []
        for x, y in batches():
            ys.append(y)
            for label, spec in models.items():
                logits[label].append(predict_logits(spec, x, autocast))
        y_all = torch.cat(ys)
        for label in models:
            z = torch.cat(logits[label])
            out[label].acc[(name, severity)], out[label].ece[(name, severity)] = _scores(z, y_all)
            if on_logits:
                on_logits(label, name, severity, z, y_all)
    return out


# ---- metrics ----------------------------------------------------------------------------------

def mean_corruption_accuracy(acc: dict[tuple[str, int], float], corruptions: Sequence[str]) -> float:
    """Mean accuracy over `corruptions` x severities 1-5."""
    require(len(corruptions) > 0, "mean corruption accuracy needs at least one corruption")
    return sum(acc[(c, s)] for c in corruptions for s in SEVERITIES) / (len(corruptions) * len(SEVERITIES))


@dataclass
class CorruptionErrors:
    mce: float                      # mean over corruptions of CE_c
    relative_mce: float             # mean over corruptions of relative CE_c
    ce: dict[str, float]
    relative_ce: dict[str, float]


def corruption_errors(scores: CorruptionScores, baseline: CorruptionScores, corruptions: Sequence[str]) -> CorruptionErrors:
    """Hendrycks & Dietterich's CE and relative CE per corruption, and their means (fractions: 1 = the baseline).

    CE_c = sum_s E_s,c / sum_s E^base_s,c; relative CE_c = sum_s (E_s,c - E_clean) / sum_s (E^base_s,c -
    E^base_clean), E = 1 - accuracy. A zero denominator gives NaN for that corruption."""
    require(len(corruptions) > 0, "mCE needs at least one corruption")
    ce, rel = {}, {}
    for c in corruptions:
        err = sum(1 - scores.acc[(c, s)] for s in SEVERITIES)
        base = sum(1 - baseline.acc[(c, s)] for s in SEVERITIES)
        gap = err - len(SEVERITIES) * (1 - scores.clean_acc)
        base_gap = base - len(SEVERITIES) * (1 - baseline.clean_acc)
        ce[c] = err / base if base > 0 else math.nan
        rel[c] = gap / base_gap if base_gap != 0 else math.nan
    return CorruptionErrors(sum(ce.values()) / len(ce), sum(rel.values()) / len(rel), ce, rel)


def robustness_rows(scores: dict[tuple[str, int], CorruptionScores], corruptions: Sequence[str],
                    baseline: str | None = None) -> list[dict]:
    """One row per (model, seed): clean_acc, mean_corruption_acc (the benchmark corruptions among
    `corruptions`), extra_corruption_acc (the extras), mce and relative_mce against `baseline` with
    the same seed (None without one), clean_ece, mean_corruption_ece and acc_<corruption>."""
    bench = [c for c in corruptions if c in BENCHMARK_CORRUPTIONS]
    extra = [c for c in corruptions if c in EXTRA_CORRUPTIONS]
    headline = bench or list(corruptions)  # a subset of extras only: report what there is
    rows = []
    for (label, seed), s in scores.items():
        row = {"model": label, "seed": seed, "clean_acc": s.clean_acc,
               "mean_corruption_acc": mean_corruption_accuracy(s.acc, headline),
               "extra_corruption_acc": mean_corruption_accuracy(s.acc, extra) if extra else None,
               "mce": None, "relative_mce": None, "clean_ece": s.clean_ece,
               "mean_corruption_ece": sum(s.ece[(c, v)] for c in headline for v in SEVERITIES) / (len(headline) * len(SEVERITIES))}
        base = scores.get((baseline, seed)) if baseline is not None else None
        if base is not None:
            errors = corruption_errors(s, base, headline)
            row["mce"], row["relative_mce"] = errors.mce, errors.relative_mce
        row.update({f"acc_{c}": sum(s.acc[(c, v)] for v in SEVERITIES) / len(SEVERITIES) for c in corruptions})
        rows.append(row)
    return rows


def summarize_over_seeds(rows: list[dict], key: str = "model") -> list[dict]:
    """Mean of every numeric column per `key`, with `<column>_std` (sample std, 0 for one seed) and n_seeds."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    out = []
    for name, members in groups.items():
        summary = {key: name, "n_seeds": len(members)}
        columns = [c for c in members[0] if c not in (key, "seed")]
        for c in columns:
            values = [r[c] for r in members if isinstance(r.get(c), (int, float)) and not math.isnan(r[c])]
            if not values:
                summary[c] = summary[f"{c}_std"] = None
                continue
            mean = sum(values) / len(values)
            summary[c] = mean
            summary[f"{c}_std"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                                   if len(values) > 1 else 0.0)
        out.append(summary)
    return out


def calibration_summary(logits: torch.Tensor, labels: torch.Tensor, val_logits: torch.Tensor | None = None,
                        val_labels: torch.Tensor | None = None) -> dict:
    """test_ece/test_nll, and with validation logits the fitted temperature and test_ece_ts/test_nll_ts."""
    row = {"temperature": None, "test_ece": expected_calibration_error(logits, labels, from_logits=True),
           "test_nll": negative_log_likelihood(logits, labels), "test_ece_ts": None, "test_nll_ts": None}
    if val_logits is not None and len(val_logits):
        t = fit_temperature(val_logits, val_labels)
        scaled = apply_temperature(logits, t)
        row.update(temperature=t, test_ece_ts=expected_calibration_error(scaled, labels, from_logits=True),
                   test_nll_ts=negative_log_likelihood(scaled, labels))
    return row


# ---- runs: the classifier of a checkpoint and the images it was evaluated on -------------------

def load_classifier(checkpoint: str | Path, device) -> tuple[dict, ModelSpec]:
    """The run record and its classifier (the strategy's main network) in eval mode on `device`,
    with the run's normalization; a checkpoint of a run that trains no classifier is a UsageError."""
    from robustlab.runs import load_run_network
    from robustlab.strategies import get_strategy

    checkpoint = Path(checkpoint)
    require(checkpoint.is_file(), f"checkpoint {checkpoint} does not exist")
    run = load_run_network(checkpoint)
    require(get_strategy(run.config.strategy.name).classifies,
            f"{checkpoint} is a {run.config.strategy.name!r} run, which trains no classifier; robustness evaluates "
            "classifier runs")
    data = run.record["data"]
    return run.record, ModelSpec(run.network.to(device).eval(), data["mean"], data["std"])


def run_eval_splits(record: dict, ctx, test_size: int | None = None):
    """The run's validation split and its test split (or a class-balanced subset of `test_size`),
    rebuilt from the record; training-label noise is left out unless it was applied to validation."""
    splits = _run_splits(record, ctx, test_size)
    return splits.val, splits.test


def _run_splits(record: dict, ctx, test_size: int | None = None):
    """run_eval_splits' DataSplits (its test_index places the test images in the full test set)."""
    from dataclasses import fields

    from robustlab.experiment import DataConfig, prepare_data

    known = {f.name for f in fields(DataConfig)}
    data = DataConfig(**{k: v for k, v in record["config"]["data"].items() if k in known})
    if test_size is not None and (data.test_size is None or test_size < data.test_size):
        data.test_size = test_size
    if not data.noisy_val:  # the train labels are not needed
        clean = DataConfig()
        for name in ("noise_type", "noise_rate", "noise_file"):
            if hasattr(data, name):
                setattr(data, name, getattr(clean, name))
    return prepare_data(data, record["config"]["seed"], ctx).splits


def finished_checkpoints(results_dir: str | Path) -> list[Path]:
    """last.pt of every run with a record in a study's results folder whose strategy trains a classifier."""
    from robustlab.records import load_records
    from robustlab.strategies import get_strategy

    records = [r for r in load_records(results_dir) if get_strategy(r["config"]["strategy"]["name"]).classifies]
    found = [p for p in (Path(results_dir) / "runs" / r["run_id"] / "last.pt" for r in records) if p.is_file()]
    require(bool(found), f"{results_dir}: no finished classifier run (records/<run_id>.json with runs/<run_id>/last.pt)")
    return found


def run_labels(records: list[dict], checkpoints: list[Path]) -> list[str]:
    """Tag (or model name) per run; a (label, seed) seen twice gets the run hash, then the checkpoint name."""
    labels = [r["config"].get("tag") or r["config"]["model"] for r in records]
    for extra in (lambda i: records[i]["run_id"].rsplit("-", 1)[-1], lambda i: Path(checkpoints[i]).stem):
        keys = [(label, r["config"]["seed"]) for label, r in zip(labels, records)]
        labels = [f"{label}-{extra(i)}" if keys.count(keys[i]) > 1 else label for i, label in enumerate(labels)]
    return labels


@dataclass
class RunEvaluation:
    scores: dict[tuple[str, int], CorruptionScores]              # (label, seed) -> scores
    calibration: list[dict]                                       # model, seed + calibration_summary
    clean_logits: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]]  # clean test logits and labels
    test_sizes: set[int]


def evaluate_runs(loaded: list[tuple[dict, ModelSpec]], labels: list[str], ctx, corruptions: Sequence[str], device="cpu",
                  test_size: int | None = None, corruption_seed: int = 0, released: str | Path | None = None,
                  autocast=None) -> RunEvaluation:
    """Score runs (record, classifier) on their own test splits, clean and under `corruptions`
    (generated, or the release files in `released`), plus clean calibration with temperature
    scaling on their validation splits. Runs that share a test split see the same corrupted images,
    and the clean and corrupted accuracies of a run come from the same test images (with release
    files: the rows of the run's test images in every severity block)."""
    groups: dict[str, list[int]] = {}
    for i, (record, _) in enumerate(loaded):
        groups.setdefault(repr((record["config"]["data"], record["config"]["seed"])), []).append(i)
    out = RunEvaluation({}, [], {}, set())
    for members in groups.values():
        record = loaded[members[0]][0]
        splits = _run_splits(record, ctx, test_size)
        val, test = splits.val, splits.test
        out.test_sizes.add(len(test))
        models = {(labels[i], loaded[i][0]["config"]["seed"]): loaded[i][1] for i in members}
        # Released files: the same test images as the clean evaluation, from every severity block.
        source = (released_corruptions(released, corruptions, device, num_classes=len(record["data"]["classes"]),
                                       indices=splits.test_index, test_labels=test.labels)
                  if released else generated_corruptions(test.images, test.labels, corruptions, corruption_seed, device))

        def keep_clean(key, corruption, severity, logits, y):
            if corruption == "clean":
                out.clean_logits[key] = (logits, y)
        out.scores.update(evaluate_corruptions(models, test.images, test.labels, source, device, autocast=autocast,
                                               on_logits=keep_clean))
        for key, spec in models.items():
            has_val = val is not None and len(val) > 0
            z_val = (torch.cat([predict_logits(spec, x, autocast) for x, _ in _uint8_batches(val.images, val.labels, device, EVAL_BATCH)])
                     if has_val else None)
            row = calibration_summary(*out.clean_logits[key], z_val, val.labels.to(device) if has_val else None)
            out.calibration.append({"model": key[0], "seed": key[1], **row})
    return out


# ---- long table -------------------------------------------------------------------------------

def long_rows(scores: dict[tuple[str, int], CorruptionScores]) -> list[dict]:
    """One row per (model, seed, corruption, severity): acc, ece and the corruption's family."""
    from robustlab.corruptions.inputs import corruption_family

    return [{"model": label, "seed": seed, "corruption": c, "family": corruption_family(c), "severity": v,
             "benchmark": c in BENCHMARK_CORRUPTIONS, "acc": s.acc[(c, v)], "ece": s.ece[(c, v)]}
            for (label, seed), s in scores.items() for (c, v) in s.acc]
