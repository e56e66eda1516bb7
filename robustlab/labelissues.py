"""Find the wrong labels and estimate the noise: K-fold out-of-fold probabilities + cleanlab.

    python -m robustlab.labelissues --dataset cifar10 --noise-type human:worst --folds 5 --out DIR
    python -m robustlab.labelissues --noise-type symmetric --noise 0.4 --preset quick --out DIR
    python -m robustlab.labelissues --noise-type human:worst --shard 0/2 --out DIR   # and 1/2 elsewhere
    python -m robustlab.labelissues --noise-type human:worst --launcher slurm --slurm-gpus 1 --out DIR  # a job per fold
    python -m robustlab.labelissues --noise-type human:worst --pred-probs probs.npy --out DIR

Data, noise, model and training recipe are those of a noisy-label study run (`--preset` from
studies.noisy_labels, the same data and recipe options), trained with cross-entropy. The training
split (after the validation hold-out and any --train-size subset) is cut into --folds folds,
class-balanced on the given labels and fixed by --seed; fold k's model trains on the other folds
and scores fold k only, so every image's probabilities come from a model that never saw it
(`robustlab.crossval`). A finished fold is saved atomically in DIR/folds/ and skipped on rerun;
--resume continues an unfinished fold from its last epoch; --shard I/N trains folds k with
k % N == I and writes no report (an unsharded rerun or --collect writes it once all folds exist).
--launcher slurm|local submits one submitit job per unfinished fold (each the same command with
--shard k/K) and writes the report when they have finished (--no-wait: a later --collect does).

Writes to DIR:
- pred_probs.npy: (N, C) out-of-fold probabilities, rows in training-split order (`index` below);
- label_issues.csv: index (position in the dataset's training set, the order --noise-file and
  `robustlab.noise export` use), path (image file for image folders), given_label, suggested_label
  (most probable class), label_quality (cleanlab's self-confidence), is_issue
  (cleanlab.filter.find_label_issues); worst first;
- detectors.md/.csv: where the clean labels are known (synthetic noise, CIFAR-N), precision, recall
  and F1 of each detector's flags against the real errors and the AUROC of its score: confident
  learning, DivideMix's loss GMM and the small-loss rule (robustlab.label_quality) on the
  out-of-fold probabilities, and the area under the margin (AUM, Pleiss et al. 2020: each image's
  margin averaged over the epochs of the K - 1 fold models that trained on it; off with --no-aum);
- noise_estimate.json and the same in detectors.md: the estimated noise rate and transition matrix
  (cleanlab's joint) with the true ones where known (absolute error of the rate, Frobenius error of T);
- worst_labels.png (the worst-ranked images with given and suggested labels) and
  transition_estimate.png (estimated vs true T).
"""
from __future__ import annotations

import copy
import csv
import io
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from robustlab.cli import (Parser, add_context_args, add_data_args, add_train_args, apply_data_args, apply_train_args,
                           context_from_args, nonneg_int, noise_type, positive_int, unit_rate)
from robustlab.config import EVAL_BATCH_SIZE, Context, ExperimentConfig, StrategyConfig
from robustlab.crossval import (assign_folds, check_folds, fold_seconds, gather_aum, gather_folds, load_pred_probs,
                                missing_folds, run_folds, shard_folds)
from robustlab.errors import UsageError, cli_entry, require
from robustlab.fileio import atomic_write, read_json, write_json, write_text
from robustlab.launch import add_launcher_args, check_launcher_args, job_failure, make_executor, parse_shard
from robustlab.label_quality import (ISSUE_COLUMNS, DetectorInput, compare_noise, estimate_noise, issue_rows,
                                     run_detectors, score_detector)
from robustlab.recipes import PRESETS

DEFAULT_FOLDS = 5
DETECTOR_COLUMNS = ["detector", "flagged", "flagged_fraction", "true_errors", "precision", "recall", "f1", "auroc"]


# ---- one fold model ----------------------------------------------------------------------------

def fold_trainer(cfg: ExperimentConfig, data, device, folder: Path, resume: bool = False, quiet: bool = True,
                 aum: bool = False):
    """A `robustlab.crossval.Trainer` that trains `cfg` (with cross-entropy) on the given positions of
    the prepared training split and returns softmax probabilities of the held-out positions; with
    `aum`, also the area under the margin of every trained position (the fold model records its
    training dynamics: one extra no-grad pass over its training images per epoch).

    The fold model validates on the run's validation split (never scored) and is scored with its
    last-epoch weights; its checkpoints live in folder/fold_<k>/ until the fold is saved. The input
    normalisation is the training split's (unlabelled pixel statistics, shared by all folds)."""
    import torch

    from robustlab.data import DeviceLoader, Normalize
    from robustlab.data.splits import DataSplits
    from robustlab.dynamics import DYNAMICS_FILE, area_under_margin
    from robustlab.engine import fit
    from robustlab.evaluate import collect_logits
    from robustlab.prepare import PreparedData, build_strategy, default_train_augment, make_loaders

    cfg = copy.deepcopy(cfg)
    cfg.strategy = StrategyConfig("ce")
    cfg.train.record_dynamics = aum  # for the AUM of the trained images; the held-out fold is scored once
    splits = data.splits

    def train(k: int, train_pos: np.ndarray, heldout_pos: np.ndarray) -> np.ndarray:
        torch.manual_seed(cfg.seed * 1000 + k)
        sub = DataSplits(splits.train.subset(train_pos), splits.val, splits.test, splits.mean, splits.std)
        prepared = PreparedData(sub, data.clean_train_labels[torch.as_tensor(train_pos)], data.noise)
        strategy = build_strategy(cfg, prepared, device)
        augment = default_train_augment(cfg, sub, strategy)
        train_loader, val_loader, _ = make_loaders(sub, cfg.train, augment, cfg.seed * 1000 + k, device)
        run_dir = folder / f"fold_{k}"
        last = run_dir / "last.pt"
        train_pass = (DeviceLoader(sub.train.images, sub.train.labels, EVAL_BATCH_SIZE, Normalize(splits.mean, splits.std),
                                   shuffle=False, device=device) if aum else None)
        result = fit(strategy, train_loader, cfg.train, val_loader, None, run_dir=run_dir,
                     resume=last if resume and last.exists() else None, quiet=quiet, num_classes=splits.num_classes,
                     train_pass_loader=train_pass)
        held = DeviceLoader(splits.train.images[heldout_pos], splits.train.labels[heldout_pos], EVAL_BATCH_SIZE,
                            Normalize(splits.mean, splits.std), shuffle=False, device=device)
        strategy.eval()
        logits, _ = collect_logits(strategy.predict, held)
        probs = logits.double().softmax(1).cpu().numpy()
        for name in ("last.pt", "best.pt", DYNAMICS_FILE):  # the fold's result is its probabilities (and AUM)
            (run_dir / name).unlink(missing_ok=True)
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        if not aum:
            return probs
        return probs, area_under_margin(result.dynamics["margin"])

    return train


# ---- the forget-rate estimate of a study run ---------------------------------------------------

def estimate_key(cfg: ExperimentConfig, folds: int) -> dict:
    """What the estimate depends on: data and noise (with the seed), model and recipe, folds."""
    return {"data": asdict(cfg.data), "seed": cfg.seed, "model": cfg.model, "model_kwargs": cfg.model_kwargs,
            "train": asdict(cfg.train), "augment": asdict(cfg.augment), "folds": folds}


def noise_rate_for_run(cfg: ExperimentConfig, data, device, results_dir: Path, folds: int = DEFAULT_FOLDS,
                       quiet: bool = True) -> dict:
    """The noise estimate (`noise_estimate.json` fields) of a run's noisy training labels, computed
    once per (data, noise, seed, recipe) and cached in results_dir/noise_estimates/: K-fold
    cross-entropy models of the run's own recipe, out-of-fold probabilities, cleanlab's joint.
    The clean labels are not used (except to report the error of the estimate)."""
    import torch

    from robustlab.records import config_hash

    key = estimate_key(cfg, folds)
    name = f"{cfg.data.dataset}-{cfg.data.noise_type}-s{cfg.seed}-{config_hash(key)}".replace(":", "_").replace("/", "_")
    base = Path(results_dir) / "noise_estimates"
    path = base / f"{name}.json"
    if path.exists():
        return read_json(path)
    labels = data.splits.train.labels.numpy()
    try:
        check_folds(labels, folds)
    except UsageError as exc:
        raise UsageError(f"forget_rate='estimate': no noise estimate for {cfg.data.dataset} {cfg.data.noise_type}: "
                         f"{exc}") from None
    print(f"estimating the noise rate of {cfg.data.dataset} {cfg.data.noise_type} seed {cfg.seed} by {folds}-fold "
          f"cross-validation (cached in {path})", file=sys.stderr)
    fold_of = assign_folds(labels, folds, cfg.seed)
    folder = base / name
    with torch.random.fork_rng(devices=[device] if getattr(device, "type", "cpu") == "cuda" else []):
        run_folds(fold_of, data.splits.num_classes, fold_trainer(cfg, data, device, folder, resume=True, quiet=quiet),
                  folder)
    probs = gather_folds(fold_of, data.splits.num_classes, folder)
    est = estimate_noise(labels, probs)
    report = data.noise or {}
    result = {**compare_noise(est, report.get("realized_rate"), report.get("transition")),
              "folds": folds, "key": key, "method": "cleanlab.count.estimate_joint on out-of-fold probabilities"}
    write_json(path, result)
    return read_json(path)  # as a later call reads it


# ---- the command -------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog="python -m robustlab.labelissues", description=__doc__)
    g = p.add_argument_group("label issues")
    g.add_argument("--preset", choices=PRESETS, default="quick",
                   help="the noisy-label study's recipe: quick (small CNN, 4k images, CPU minutes), paper, fast")
    g.add_argument("--model", default=None, help="override the preset's model")
    g.add_argument("--noise-type", type=noise_type, default="symmetric", help="label noise (robustlab.corruptions)")
    g.add_argument("--noise", type=unit_rate, default=0.0,
                   help="rate for synthetic and instance noise (default 0: the data set's own labels)")
    g.add_argument("--folds", type=int, default=DEFAULT_FOLDS,
                   help="K: folds of the training split, 2 .. the smallest class (default 5)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="split, noise draws, fold assignment and fold models")
    g.add_argument("--clean-val", action="store_true", help="clean validation labels for the fold models (default noisy)")
    g.add_argument("--shard", type=parse_shard, default=None, metavar="I/N", help="train only folds k with k %% N == I; no report")
    g.add_argument("--resume", action="store_true", help="continue an unfinished fold from its last epoch")
    g.add_argument("--collect", action="store_true", help="train nothing; write the report from the finished folds")
    g.add_argument("--pred-probs", default=None, metavar="PATH",
                   help="use these (N, C) out-of-fold probabilities (.npy, training-split order) instead of training")
    g.add_argument("--top", type=positive_int, default=24, help="images in worst_labels.png (default 24)")
    g.add_argument("--no-aum", action="store_true",
                   help="fold models record no training dynamics (saves one no-grad pass per epoch; no AUM detector)")
    g.add_argument("--no-figures", action="store_true", help="skip worst_labels.png and transition_estimate.png")
    add_data_args(p)
    add_train_args(p, smoothing=False)
    add_context_args(p, default_out="results/labelissues")
    add_launcher_args(p)
    return p


def build_config(args) -> ExperimentConfig:
    from robustlab.corruptions import NOISE_TYPES
    from robustlab.models import require_model
    from robustlab.recipes import noisy_label_preset

    cfg = noisy_label_preset(args.preset)
    if args.model and args.model != cfg.model:
        cfg.model, cfg.model_kwargs = args.model, {}  # the preset's model arguments belong to its own model
    cfg.seed, cfg.tag, cfg.strategy = args.seed, "labelissues", StrategyConfig("ce")
    cfg.data.noise_type, cfg.data.noise_rate = args.noise_type, args.noise
    cfg.data.noisy_val = not args.clean_val
    if args.noise_type in NOISE_TYPES and args.noise == 0:
        cfg.data.noise_type = "symmetric"  # the data set's own labels
    apply_data_args(args, cfg.data)
    apply_train_args(args, cfg.train, cfg.augment)
    require_model(cfg.model)
    cfg.train.validate()
    return cfg


def training_paths(dataset: str, data_dir: str | None, train_index: np.ndarray) -> list[str]:
    """The image file of each training-split sample (empty for torchvision's pickles)."""
    from robustlab.corruptions.human import image_folder_train_files, locate_dataset

    layout = locate_dataset(dataset, data_dir)
    if layout.kind != "imagefolder":
        return [""] * len(train_index)
    files = [p for p, _ in image_folder_train_files(layout.root)]
    return [files[i] for i in train_index]


def check_spec(out: Path, spec: dict) -> None:
    """DIR belongs to one configuration: a second one must not mix its folds in."""
    path = out / "labelissues.json"
    if path.exists():
        old = read_json(path)
        require(old == json.loads(json.dumps(spec, default=str)), f"--out {out} holds label issues of another configuration (see {path}); "
                             "use a new --out or delete that folder")
    else:
        write_json(path, spec)


def detector_table(scores: dict[str, dict]) -> tuple[str, str]:
    """(markdown, csv) of the detector scores, one row per detector."""
    lines = ["| " + " | ".join(DETECTOR_COLUMNS) + " |", "|" + "---|" * len(DETECTOR_COLUMNS)]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(DETECTOR_COLUMNS)
    for name, s in scores.items():
        row = [name, *(s[c] for c in DETECTOR_COLUMNS[1:])]
        writer.writerow(["" if v is None else v for v in row])
        lines.append("| " + " | ".join(_cell(c, v) for c, v in zip(DETECTOR_COLUMNS, row)) + " |")
    return "\n".join(lines) + "\n", buf.getvalue()


def _cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column in ("flagged_fraction", "precision", "recall", "f1"):
        return f"{100 * value:.1f}%"
    if column == "auroc":
        return f"{value:.3f}"
    return str(value)


def noise_section(noise: dict) -> str:
    def fmt(v, pct=True):
        return "-" if v is None else (f"{100 * v:.2f}%" if pct else f"{v:.3f}")

    return ("| noise rate estimated | true (realised) | abs. error | T Frobenius error |\n|---|---|---|---|\n"
            f"| {fmt(noise['estimated_noise_rate'])} | {fmt(noise['true_noise_rate'])} | "
            f"{fmt(noise['noise_rate_abs_error'])} | {fmt(noise['transition_frobenius_error'], False)} |\n")


def write_report(out: Path, cfg: ExperimentConfig, args, labels: np.ndarray, pred_probs: np.ndarray,
                 index: np.ndarray, paths: list[str], clean: np.ndarray | None, noise: dict | None, classes: list[str],
                 images=None, extra_scores: dict | None = None) -> str:
    """Compute every result first, then write each file atomically; returns the markdown report."""
    est = estimate_noise(labels, pred_probs)
    detections = run_detectors(DetectorInput(labels, pred_probs, est.noise_rate, cfg.seed), extra_scores)
    rows = issue_rows(index, paths, labels, pred_probs, detections["confident_learning"])
    noise_cmp = compare_noise(est, noise.get("realized_rate") if noise else None, noise.get("transition") if noise else None)
    scores = {name: score_detector(det, labels != clean) for name, det in detections.items()} if noise else {}
    issues = int(detections["confident_learning"].flags.sum())
    source = "given by --pred-probs" if args.pred_probs else f"{fold_seconds(out / 'folds', args.folds):.0f} s of fold training"
    head = (f"## Label issues: {cfg.data.dataset} {cfg.data.noise_type}"
            f"{f' {cfg.data.noise_rate:g}' if cfg.data.noise_rate else ''}, seed {cfg.seed}\n\n"
            f"{len(labels)} training images, {cfg.model}, preset {args.preset}, {cfg.train.epochs} epochs per fold model, "
            f"{args.folds}-fold out-of-fold probabilities ({source}). "
            f"cleanlab flags {issues} ({issues / len(labels):.1%}) labels.\n\n### Noise estimate\n\n"
            + noise_section(noise_cmp) + "\n")
    if scores:
        md_table, csv_table = detector_table(scores)
        body = ("### Detectors against the real errors\n\n" + md_table +
                "\nconfident_learning: cleanlab.filter.find_label_issues (flags) and 1 - label quality (score); "
                "dividemix_gmm: DivideMix's 2-component GMM on the out-of-fold loss (flag: clean probability < 0.5); "
                "small_loss: the estimated-noise-rate fraction with the largest out-of-fold loss"
                + ("; aum: the area under the margin over the training epochs of the fold models that trained on the "
                   "image (flag: the estimated-noise-rate fraction with the lowest AUM)" if extra_scores else "")
                + ". AUROC of each score for separating mislabeled from clean images.\n")
    else:
        csv_table = None
        body = "The clean labels are unknown here: the detectors cannot be scored.\n"
    report = head + body
    buf = io.BytesIO()
    np.save(buf, pred_probs.astype(np.float32))
    atomic_write(out / "pred_probs.npy", lambda f: f.write(buf.getvalue()))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ISSUE_COLUMNS)
    writer.writerows(rows)
    write_text(out / "label_issues.csv", text.getvalue())
    write_json(out / "noise_estimate.json", {**noise_cmp, "joint": est.joint.tolist(), "detectors": scores})
    write_text(out / "detectors.md", report)
    if csv_table is not None:
        write_text(out / "detectors.csv", csv_table)
    if images is not None:
        from robustlab.labelissues_plots import plot_transition_estimate, plot_worst_labels

        position = {int(i): p for p, i in enumerate(index)}
        worst = [position[r[0]] for r in rows[:args.top]]
        plot_worst_labels(images[worst], labels[worst], pred_probs[worst].argmax(1), [r[4] for r in rows[:args.top]],
                          classes, out / "worst_labels.png")
        plot_transition_estimate(est.transition, noise_cmp["true_transition"], classes, out / "transition_estimate.png")
    return report


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what each fold job reruns with --shard k/K
    out = Path(args.out)
    existed = out.exists()
    try:
        return _run(args)
    except UsageError:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # bad input leaves no empty results folder behind
        raise


def _run(args) -> int:
    import time

    import torch

    from robustlab.prepare import prepare_data, resolve_device

    t0 = time.time()
    require(args.folds >= 2, f"--folds must be at least 2, got {args.folds}")
    require(not (args.collect and args.pred_probs), "--collect and --pred-probs exclude each other")
    require(not (args.shard and args.pred_probs), "--shard trains folds; with --pred-probs nothing is trained")
    check_launcher_args(args)
    require(args.launcher == "direct" or not (args.collect or args.pred_probs),
            f"--launcher {args.launcher} submits fold training; with --collect or --pred-probs nothing is trained")
    cfg = build_config(args)
    extra_scores = None
    ctx: Context = context_from_args(args, resume=args.resume)
    out = Path(args.out)
    data = prepare_data(cfg.data, cfg.seed, ctx)
    labels = data.splits.train.labels.numpy()
    num_classes = data.splits.num_classes
    check_folds(labels, args.folds)
    fold_of = assign_folds(labels, args.folds, cfg.seed)
    if args.pred_probs:
        pred_probs = load_pred_probs(args.pred_probs, len(labels), num_classes)
    else:
        check_spec(out, {"config": cfg.key(), "folds": args.folds, "num_train": len(labels)})
        if args.launcher != "direct" and not args.collect:
            if not submit_folds(args, fold_of, num_classes, out):
                return 0  # --no-wait: the jobs run on; --collect writes the report
        elif not args.collect:
            device = resolve_device(ctx.device)
            mine = shard_folds(args.folds, args.shard)
            print(f"{len(labels)} images, {args.folds} folds; this process trains fold(s) "
                  f"{', '.join(map(str, mine))} unless finished", file=sys.stderr)
            torch.manual_seed(cfg.seed)
            run_folds(fold_of, num_classes,
                      fold_trainer(cfg, data, device, out / "folds", args.resume, ctx.quiet, aum=not args.no_aum),
                      out / "folds", args.shard)
        if args.shard is not None:
            left = missing_folds(fold_of, num_classes, out / "folds")
            print(f"shard {args.shard[0]}/{args.shard[1]} done; folds still missing: {left or 'none'}; "
                  "rerun without --shard (or with --collect) for the report", file=sys.stderr)
            return 0
        pred_probs = gather_folds(fold_of, num_classes, out / "folds")
        aum = None if args.no_aum else gather_aum(fold_of, out / "folds")
        if aum is not None:
            extra_scores = {"aum": -aum}  # a low area under the margin marks a likely wrong label
    clean = data.clean_train_labels.numpy() if data.noise else None
    index = np.asarray(data.splits.train_index)
    paths = training_paths(cfg.data.dataset, ctx.data_dir, index)
    report = write_report(out, cfg, args, labels, pred_probs, index, paths, clean, data.noise,
                          data.splits.classes, None if args.no_figures else data.splits.train.images, extra_scores)
    print(report)
    print(f"wrote {out}/label_issues.csv, detectors.md, pred_probs.npy, figures ({time.time() - t0:.0f} s)",
          file=sys.stderr)
    return 0


def run_fold_job(argv: list[str], k: int, total: int, threads: int | None = None) -> int:
    """One fold inside a submitit job: the same command with --shard k/total, in this process
    (with the parent's torch thread count under the local launcher, so its numerics match)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    code = main([*argv, "--launcher", "direct", "--shard", f"{k}/{total}", "--quiet"])
    require(code == 0, f"fold {k} exited with status {code}")
    return code


def submit_folds(args, fold_of: np.ndarray, num_classes: int, out: Path) -> bool:
    """Submit a job per unfinished fold of this shard; True once they have all finished (False with
    --no-wait, after submitting). A failed job is a UsageError naming its log."""
    import time

    todo = [k for k in missing_folds(fold_of, num_classes, out / "folds") if k in shard_folds(args.folds, args.shard)]
    executor = make_executor(args, out / "submitit")
    threads = None
    if args.launcher == "local":
        import torch

        threads = torch.get_num_threads()
    submit = lambda k: (k, executor.submit(run_fold_job, args.argv, k, args.folds, threads))  # noqa: E731
    queue, active = list(todo), []
    if args.launcher == "slurm" and args.slurm_array_parallelism:
        with executor.batch():  # one job array
            active, queue = [submit(k) for k in queue], []
    limit = args.local_parallelism if args.launcher == "local" else len(todo)
    while queue and len(active) < limit:
        active.append(submit(queue.pop(0)))
    print(f"submitted fold job(s) for fold(s) {', '.join(map(str, todo)) or 'none'}; logs in {out / 'submitit'}",
          file=sys.stderr)
    if args.no_wait:
        print("rerun the same command with --collect when they have finished", file=sys.stderr)
        return False
    while active:
        done = [(k, job) for k, job in active if job.done()]
        if not done:
            time.sleep(0.5)
            continue
        for k, job in done:
            active.remove((k, job))
            reason = job_failure(job)
            require(reason is None, f"fold {k} failed in job {job.job_id}: {reason} (log: {job.paths.stderr})")
            if queue:
                active.append(submit(queue.pop(0)))
    return True


if __name__ == "__main__":
    sys.exit(main())
