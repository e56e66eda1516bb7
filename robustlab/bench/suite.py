"""The GPU suite: one command that measures the CUDA path, the speed goals and the paper preset.

    python -m robustlab.bench --suite gpu --out benchmarks/gpu/ [--smoke]

Parts, each with its own wall-clock budget so that the whole suite ends within about 8 minutes on
one H100/H200 (`--smoke`: the same code with tiny sizes, seconds on a CPU):
  throughput          ResNet-18 at batch 128 and 512: torchvision DataLoader with per-sample PIL
                      transforms (2 and 8 workers, fp32) against the device-resident loader (fp32;
                      bf16 + channels_last; bf16 + channels_last + torch.compile).
  time_to_accuracy    ResNet-18, the standard recipe (SGD nesterov lr 0.4, batch 512, wd 5e-4,
                      2 warm-up epochs + cosine, random crop with reflect padding 4 + flip), on the
                      whole training set; test accuracy (no TTA) after every epoch until the epoch
                      cap or the budget. `seconds` is the training time up to the first epoch at the
                      target (evaluation excluded).
  noisy_labels_paper  `studies.noisy_labels --noise 0.3 --coteach --preset paper`, its three arms as
                      concurrent shards (one process each) on the one GPU; last-epoch test accuracy of
                      clean_ce, noisy_ce and noisy_coteach, Co-Teaching's label precision, minutes.
                      Arms cut off by the budget report the last finished epoch and `complete: false`.
Writes `<out>/<date>-<device>.json` and prints a table.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustlab.bench.throughput import Setting, bench_images, device_name, measure
from robustlab.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
PAPER_ARMS = ("clean_ce", "noisy_ce", "noisy_coteach")


@dataclass
class SuiteSizes:
    model: str = "resnet18"
    batch_sizes: tuple[int, ...] = (128, 512)
    workers: tuple[int, ...] = (2, 8)
    steps: int = 30
    warmup: int = 5
    repeats: int = 2
    image_limit: int | None = None
    compile_backend: str = "inductor"
    # time to accuracy: the standard ResNet-18 recipe
    tta_model: str = "resnet18"
    tta_epochs: int = 60               # epoch cap = the cosine schedule's length
    tta_target: float = 0.92
    tta_batch_size: int = 512
    tta_train_size: int | None = None  # None: all 50,000 training images
    tta_test_size: int | None = None   # None: all 10,000 test images
    tta_budget_s: float = 100.0
    # the headline study's paper preset
    paper_args: list[str] = field(default_factory=list)  # extra study options (smoke: tiny sizes)
    paper_shards: int = 3
    paper_budget_s: float = 180.0


GPU = SuiteSizes()
SMOKE = SuiteSizes(model="tiny_cnn", batch_sizes=(16, 32), workers=(0, 1), steps=2, warmup=1, repeats=1,
                   image_limit=128, compile_backend="eager", tta_model="tiny_cnn", tta_epochs=2, tta_batch_size=32,
                   tta_budget_s=300.0, paper_shards=2, paper_budget_s=600.0,
                   paper_args=["--model", "tiny_cnn", "--epochs", "1", "--batch-size", "16", "--train-size", "40",
                               "--val-size", "20", "--test-size", "20", "--num-gradual", "1"])


# ---- throughput --------------------------------------------------------------------------------

def throughput_settings(sizes: SuiteSizes) -> list[Setting]:
    out = []
    for b in sizes.batch_sizes:
        out += [Setting("dataloader", "fp32", False, False, b, w) for w in sizes.workers]
        out += [Setting("device", "fp32", False, False, b), Setting("device", "bf16", True, False, b),
                Setting("device", "bf16", True, True, b)]
    return out


def run_throughput(sizes: SuiteSizes, device: torch.device, data_dir, cache_dir, log) -> list[dict]:
    images, labels, source = bench_images(data_dir, cache_dir, sizes.image_limit)
    import torch._dynamo

    torch._dynamo.reset()
    rows = measure(throughput_settings(sizes), sizes.model, images, labels, device, steps=sizes.steps,
                   warmup=sizes.warmup, repeats=sizes.repeats, log=log, compile_backend=sizes.compile_backend)
    for r in rows:
        r["data"] = source
        r["compile_backend"] = sizes.compile_backend if r["compile"] else None
    return rows


# ---- time to accuracy --------------------------------------------------------------------------

class _BudgetSpent(Exception):
    pass


def time_to_accuracy(sizes: SuiteSizes, device: torch.device, data_dir, cache_dir, workdir: Path) -> dict:
    from robustlab.checkpoint import load_checkpoint
    from robustlab.data import DeviceLoader, Normalize
    from robustlab.engine import fit
    from robustlab.precision import resolve_precision
    from robustlab.experiment import Context, ExperimentConfig, build_strategy, default_train_augment, prepare_data
    from robustlab.schedules import OptimConfig

    cfg = ExperimentConfig(model=sizes.tta_model, seed=0)
    cfg.data.train_size, cfg.data.val_size, cfg.data.test_size = sizes.tta_train_size, 0, sizes.tta_test_size
    cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = sizes.tta_epochs, sizes.tta_batch_size, "none"
    cfg.train.optim = OptimConfig(optimizer="sgd", lr=0.4, momentum=0.9, nesterov=True, weight_decay=5e-4,
                                  schedule="warmup_cosine", warmup_epochs=2)
    cfg.augment.crop_pad, cfg.augment.pad_mode, cfg.augment.flip = 4, "reflect", True
    torch.manual_seed(cfg.seed)
    data = prepare_data(cfg.data, cfg.seed, Context(data_dir=data_dir, cache_dir=cache_dir, device=str(device)))
    splits = data.splits
    strategy = build_strategy(cfg, data, device)
    deadline = time.perf_counter() + sizes.tta_budget_s

    class BudgetedLoader(DeviceLoader):
        def set_epoch(self, epoch: int) -> None:  # checked between epochs: the last one always finishes
            if time.perf_counter() > deadline:
                raise _BudgetSpent
            super().set_epoch(epoch)

    train = BudgetedLoader(splits.train.images, splits.train.labels, cfg.train.batch_size,
                           default_train_augment(cfg, splits, strategy), seed=cfg.seed, device=device)
    test = DeviceLoader(splits.test.images, splits.test.labels, 1024, Normalize(splits.mean, splits.std),
                        shuffle=False, device=device)
    run_dir = workdir / "time_to_accuracy"
    start = time.perf_counter()
    try:
        result = fit(strategy, train, cfg.train, test_loader=test, run_dir=run_dir, quiet=True,
                     num_classes=splits.num_classes)
        history, stopped = result.history, None
    except _BudgetSpent:
        history, stopped = load_checkpoint(run_dir / "last.pt")["history"], "budget"
    precision = resolve_precision(cfg.train.precision, device, cfg.train.channels_last, strategy).describe()
    wall = time.perf_counter() - start
    reached = next((i for i, r in enumerate(history) if r["test_acc"] >= sizes.tta_target), None)
    upto = history[: reached + 1] if reached is not None else history
    return {"model": sizes.tta_model, "target": sizes.tta_target, "reached": reached is not None,
            "test_acc": upto[-1]["test_acc"] if upto else None,
            "best_test_acc": max((r["test_acc"] for r in history), default=None),
            "seconds": sum(r["seconds"] for r in upto), "epochs": len(upto), "epoch_cap": sizes.tta_epochs,
            "stopped_by": stopped, "wall_seconds": wall, "train_images": len(splits.train),
            "test_images": len(splits.test), "precision": precision,
            "recipe": "SGD nesterov lr 0.4 momentum 0.9, batch 512, wd 5e-4, 2-epoch warm-up + cosine, "
                      "crop reflect 4 + flip, no TTA",
            "curve": [round(r["test_acc"], 4) for r in history]}


# ---- the noisy-label study's paper preset ------------------------------------------------------

def paper_command(sizes: SuiteSizes, out: Path, data_dir, cache_dir, shard: int) -> list[str]:
    cmd = [sys.executable, "-m", "studies.noisy_labels", "--noise", "0.3", "--coteach", "--preset", "paper",
           "--out", str(out), "--quiet", *sizes.paper_args]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    if cache_dir:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd + (["--shard", f"{shard}/{sizes.paper_shards}"] if sizes.paper_shards > 1 else [])


def noisy_labels_paper(sizes: SuiteSizes, data_dir, cache_dir, workdir: Path, log) -> dict:
    from robustlab.records import load_records

    out = workdir / "noisy_labels_paper"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    procs = [subprocess.Popen(paper_command(sizes, out, data_dir, cache_dir, i), cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(sizes.paper_shards)]
    timed_out, failures = False, []
    for p in procs:
        try:
            p.wait(timeout=max(1.0, start + sizes.paper_budget_s - time.perf_counter()))
        except subprocess.TimeoutExpired:
            timed_out = True
            p.kill()
            p.wait()
        if p.returncode not in (0, None) and not timed_out:
            failures.append((p.args, p.returncode, (p.stdout.read() or "")[-2000:]))
    minutes = (time.perf_counter() - start) / 60
    if failures:
        args, rc, tail = failures[0]
        raise UsageError(f"the paper-preset study failed (exit {rc}): {' '.join(args)}\n{tail}")
    arms = {r["config"]["tag"]: _arm_summary(r["metrics"]["test_acc"], r["history"], True)
            for r in load_records(out)}
    for tag in PAPER_ARMS:
        if tag not in arms:
            arms[tag] = _partial_arm(out, tag)
    coteach = arms.get("noisy_coteach") or {}
    return {"command": " ".join(paper_command(sizes, Path("OUT"), None, None, 0)[1:]).replace(" --shard 0/", " --shard I/"),
            "clean_ce": arms["clean_ce"]["test_acc"], "noisy_ce": arms["noisy_ce"]["test_acc"],
            "noisy_coteach": coteach.get("test_acc"), "label_precision": coteach.get("label_precision"),
            "minutes": minutes, "complete": all(a["complete"] for a in arms.values()) and not timed_out,
            "budget_minutes": sizes.paper_budget_s / 60, "arms": arms}


def _arm_summary(test_acc, history: list[dict], complete: bool) -> dict:
    last = history[-1] if history else {}
    return {"test_acc": test_acc, "label_precision": last.get("label_precision"), "epochs": len(history),
            "complete": complete}


def _partial_arm(out: Path, tag: str) -> dict:
    """An arm the budget cut off: its last finished epoch, from the run's last.pt."""
    from robustlab.checkpoint import load_checkpoint

    runs = sorted((out / "runs").glob(f"{tag}-s*/last.pt")) if (out / "runs").is_dir() else []
    if not runs:
        return _arm_summary(None, [], False)
    history = load_checkpoint(runs[0])["history"]
    return _arm_summary(history[-1]["test_acc"] if history else None, history, False)


# ---- the whole suite ---------------------------------------------------------------------------

PARTS = ("throughput", "time_to_accuracy", "noisy_labels_paper")


def commit() -> str:
    """The code's commit: ROBUSTLAB_COMMIT (a copy without .git), else git, else "unknown"."""
    if os.environ.get("ROBUSTLAB_COMMIT"):
        return os.environ["ROBUSTLAB_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def run_suite(out: str | Path, device: torch.device, smoke: bool = False, parts=PARTS, data_dir=None, cache_dir=None,
              log=print, sizes: SuiteSizes | None = None) -> tuple[dict, Path]:
    """Run the chosen parts; returns the report and the JSON path it was written to."""
    import tempfile

    from robustlab.fileio import write_json

    sizes = sizes or (SMOKE if smoke else GPU)
    if not smoke and device.type != "cuda":
        raise UsageError("--suite gpu needs a CUDA device; use --smoke to run it on a CPU with tiny sizes")
    out = Path(out)
    name = device_name(device) if device.type == "cuda" else "cpu"
    report = {"suite": "gpu", "smoke": smoke, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": name, "torch": torch.__version__, "commit": commit(), "sizes": asdict(sizes), "seconds": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="robustlab-suite-") as tmp:
        for part in parts:
            t0 = time.perf_counter()
            log(f"[suite] {part} ...")
            if part == "throughput":
                report["throughput"] = run_throughput(sizes, device, data_dir, cache_dir, log)
            elif part == "time_to_accuracy":
                report["time_to_accuracy"] = time_to_accuracy(sizes, device, data_dir, cache_dir, Path(tmp))
            elif part == "noisy_labels_paper":
                report["noisy_labels_paper"] = noisy_labels_paper(sizes, data_dir, cache_dir, Path(tmp), log)
            report["seconds"][part] = time.perf_counter() - t0
    report["seconds"]["total"] = time.perf_counter() - started
    report["goals"] = goals(report)
    path = out / f"{dt.date.today().isoformat()}-{slug(name)}{'-smoke' if smoke else ''}.json"
    write_json(path, report)
    return report, path


def _rate(rows, **match) -> float | None:
    hits = [r["img_per_s"] for r in rows if all(r.get(k) == v for k, v in match.items())]
    return max(hits) if hits else None


def goals(report: dict) -> dict:
    """The issue's goals, checked against this run's numbers (None where a part did not run)."""
    out = {}
    rows = report.get("throughput") or []
    fast = _rate(rows, loader="device", precision="bf16", channels_last=True, compile=False, batch_size=512)
    dl8 = _rate(rows, loader="dataloader", workers=8, batch_size=512)
    if fast and dl8:
        out["device_bf16_b512_vs_dataloader_8w"] = {"value": fast / dl8, "goal": ">= 4.5", "met": fast / dl8 >= 4.5}
    tta = report.get("time_to_accuracy")
    if tta:
        out["resnet18_92_in_120s"] = {"value": tta["seconds"] if tta["reached"] else None, "goal": "<= 120 s",
                                      "met": bool(tta["reached"] and tta["seconds"] <= 120)}
    paper = report.get("noisy_labels_paper")
    if paper and None not in (paper["clean_ce"], paper["noisy_ce"], paper["noisy_coteach"]):
        gap = paper["clean_ce"] - paper["noisy_ce"]
        closed = (paper["noisy_coteach"] - paper["noisy_ce"]) / gap if gap > 0 else None
        out["coteach_at_least_87"] = {"value": paper["noisy_coteach"], "goal": ">= 0.87",
                                      "met": paper["complete"] and paper["noisy_coteach"] >= 0.87}
        out["coteach_closes_60pct_of_gap"] = {"value": closed, "goal": ">= 0.6",
                                              "met": bool(paper["complete"] and closed is not None and closed >= 0.6)}
        out["paper_preset_in_10_min"] = {"value": paper["minutes"], "goal": "<= 10",
                                         "met": paper["complete"] and paper["minutes"] <= 10}
    return out


def format_report(report: dict) -> str:
    lines = [f"device {report['device']} | torch {report['torch']} | commit {report['commit']}"
             f"{' | SMOKE (tiny sizes)' if report['smoke'] else ''}"]
    rows = report.get("throughput")
    if rows:
        lines += ["", "throughput (img/s, median of round-robin windows)",
                  f"{'loader':<16}{'precision':<10}{'format':<15}{'compile':<9}{'batch':>6}{'img/s':>11}"]
        for r in rows:
            loader = f"dataloader {r['workers']}w" if r["loader"] == "dataloader" else "device"
            lines.append(f"{loader:<16}{r['precision']:<10}{'channels_last' if r['channels_last'] else 'contiguous':<15}"
                         f"{'yes' if r['compile'] else 'no':<9}{r['batch_size']:>6}{r['img_per_s']:>11,.0f}")
    tta = report.get("time_to_accuracy")
    if tta:
        lines += ["", f"time to accuracy ({tta['model']}, target {tta['target']:.1%}): "
                      f"{'reached' if tta['reached'] else 'NOT reached'}; test acc {tta['test_acc']:.2%} after "
                      f"{tta['epochs']} epochs, {tta['seconds']:.0f} s training (best {tta['best_test_acc']:.2%}, "
                      f"cap {tta['epoch_cap']} epochs{', stopped by budget' if tta['stopped_by'] else ''})"]
    paper = report.get("noisy_labels_paper")
    if paper:
        fmt = lambda v: "-" if v is None else f"{v:.2%}"  # noqa: E731
        lines += ["", f"noisy_labels --preset paper ({paper['minutes']:.1f} min, "
                      f"{'complete' if paper['complete'] else 'INCOMPLETE: cut off by the budget'}): "
                      f"clean_ce {fmt(paper['clean_ce'])}, noisy_ce {fmt(paper['noisy_ce'])}, "
                      f"noisy_coteach {fmt(paper['noisy_coteach'])}, label precision {fmt(paper['label_precision'])}",
                  "epochs finished: " + ", ".join(f"{k} {v['epochs']}" for k, v in paper["arms"].items())]
    if report.get("goals"):
        lines += ["", "goals: " + "; ".join(f"{k} {'met' if g['met'] else 'MISSED'}" for k, g in report["goals"].items())]
    lines.append(f"seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()))
    return "\n".join(lines)


__all__ = ["GPU", "PARTS", "SMOKE", "SuiteSizes", "format_report", "run_suite"]
