"""robustlab.bench: the side-by-side throughput rows, the cost tables and the GPU suite's smoke run."""
from __future__ import annotations

import json

import pytest
import torch

from robustlab.bench import suite
from robustlab.bench.cli import main as bench_main
from robustlab.bench.throughput import Setting, default_setting, measure
from robustlab.precision import resolve_precision

ROW_KEYS = {"model", "device", "loader", "precision", "channels_last", "compile", "batch_size", "img_per_s", "default"}


def _images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_default_row_is_what_train_uses_on_this_machine():
    from robustlab.models import create_model

    policy = resolve_precision("auto", "cpu", model=create_model("small_cnn"))
    assert default_setting(torch.device("cpu")) == Setting("device", policy.name, policy.channels_last, False, 128)
    images, labels = _images()
    settings = [Setting("device", "fp32", False, False, 16), Setting("device", policy.name, policy.channels_last, False, 16)]
    rows = measure(settings, "tiny_cnn", images, labels, torch.device("cpu"), steps=2, warmup=1, repeats=2)
    assert [r["default"] for r in rows] == [False, False]  # batch 16 is not the default batch size (128)
    assert all(ROW_KEYS <= r.keys() and r["img_per_s"] > 0 and len(r["img_per_s_all"]) == 2 for r in rows)
    # the reported rate is the median of the round-robin windows
    assert all(min(r["img_per_s_all"]) - 0.1 <= r["img_per_s"] <= max(r["img_per_s_all"]) + 0.1 for r in rows)


@pytest.mark.parametrize("native", [True, False])
def test_default_marker_is_what_fit_runs_with_or_without_native_bf16(monkeypatch, native):
    """(The policy for models that are not convolutional is tested in test_precision.py.)"""
    from robustlab import precision as P
    from robustlab.data import DeviceLoader
    from robustlab.engine import TrainConfig, fit
    from robustlab.models import create_model
    from robustlab.strategies import CrossEntropy

    monkeypatch.setattr(P, "cpu_capabilities", lambda: {"avx512_bf16": native})
    model = "tiny_cnn"
    images, labels = _images(8)
    train = DeviceLoader(images, labels, 8, lambda x, g: x.float() / 255, seed=0)
    result = fit(CrossEntropy(create_model(model)), train, TrainConfig(epochs=1, batch_size=8, tta="none"), quiet=True,
                 num_classes=10)
    ran = Setting("device", result.precision["precision"], result.precision["memory_format"] == "channels_last",
                  False, 128)
    assert default_setting(torch.device("cpu"), model=model) == ran
    assert (ran.precision, ran.channels_last) == (("bf16" if native else "fp32"), True)
    rows = measure([Setting("device", "fp32", False, False, 128), ran], model, images.repeat(16, 1, 1, 1),
                   labels.repeat(16), torch.device("cpu"), steps=1, warmup=0, repeats=1)
    assert [r["default"] for r in rows] == [False, True]  # fp32 contiguous is never the default for a CNN on a CPU


def test_contender_trains_the_model_it_times():
    from robustlab.bench.throughput import build_contender

    images, labels = _images(64)
    c = build_contender(Setting("device", "bf16", True, False, 32), "tiny_cnn", images, labels, torch.device("cpu"))
    before = c.strategy.model.features[0].weight.detach().clone()
    assert c.step() == 32
    assert not torch.equal(before, c.strategy.model.features[0].weight)
    assert c.strategy.model.features[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_cli_json_rows_cover_precision_format_compile_and_loader(tiny_cifar10, tmp_path, capsys):
    rc = bench_main(["--model", "tiny_cnn", "--batch-size", "16", "--steps", "1", "--warmup", "1", "--repeats", "1",
                     "--workers", "0", "--no-compile", "--format", "json", "--data-dir", str(tiny_cifar10.root),
                     "--cache-dir", str(tmp_path / "cache"), "--json-out", str(tmp_path / "bench.json"),
                     "--scaling", "40,80", "--strategy-cost", "40"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    combos = {(r["loader"], r["precision"], r["channels_last"], r["compile"]) for r in rows}
    assert {("device", p, cl, False) for p in ("fp32", "bf16") for cl in (False, True)} <= combos
    assert ("dataloader", "fp32", False, False) in combos
    assert all(ROW_KEYS <= r.keys() and r["img_per_s"] > 0 and r["batch_size"] == 16 for r in rows)
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["train_images"] for r in report["scaling"]] == [40, 80]
    assert all(r["seconds_per_epoch"] > 0 for r in report["scaling"])
    assert report["scaling"][0]["per_image_vs_smallest"] == pytest.approx(1.0)
    cost = {r["strategy"]: r for r in report["strategy_cost"]}
    assert set(cost) == {"ce", "coteach", "supcon_pretrain"} and cost["ce"]["vs_ce"] == 1.0
    assert cost["ce"]["seconds_per_epoch"] == pytest.approx(sum(cost["ce"]["ce_before_after"]) / 2)  # bracketed
    assert cost["coteach"]["vs_ce"] == pytest.approx(cost["coteach"]["seconds_per_epoch"] / cost["ce"]["seconds_per_epoch"])


def test_goals_are_checked_against_the_reported_numbers():
    report = {"throughput": [
        {"loader": "device", "precision": "bf16", "channels_last": True, "compile": False, "batch_size": 512, "img_per_s": 50_000},
        {"loader": "dataloader", "workers": 8, "precision": "fp32", "batch_size": 512, "img_per_s": 10_000}],
        "time_to_accuracy": {"reached": True, "seconds": 130.0},
        "noisy_labels_paper": {"clean_ce": 0.94, "noisy_ce": 0.84, "noisy_coteach": 0.88, "minutes": 9.0, "complete": True}}
    g = suite.goals(report)
    assert g["device_bf16_b512_vs_dataloader_8w"]["value"] == pytest.approx(5.0) and g["device_bf16_b512_vs_dataloader_8w"]["met"]
    assert not g["resnet18_92_in_120s"]["met"]
    assert g["coteach_closes_60pct_of_gap"]["value"] == pytest.approx(0.4) and not g["coteach_closes_60pct_of_gap"]["met"]
    assert g["coteach_at_least_87"]["met"] and g["paper_preset_in_10_min"]["met"]
    report["noisy_labels_paper"]["complete"] = False  # a cut-off run meets no goal
    assert not any(v["met"] for k, v in suite.goals(report).items() if k.startswith(("coteach", "paper")))


def test_gpu_suite_refuses_a_cpu_without_smoke(tmp_path):
    from robustlab.errors import UsageError

    with pytest.raises(UsageError, match="needs a CUDA device"):
        suite.run_suite(tmp_path, torch.device("cpu"), smoke=False)


def test_gpu_suite_smoke_writes_a_sane_report(tiny_cifar10, tmp_path, capsys):
    out = tmp_path / "gpu"
    rc = bench_main(["--suite", "gpu", "--smoke", "--device", "cpu", "--out", str(out),
                     "--data-dir", str(tiny_cifar10.root), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    printed = capsys.readouterr().out
    files = list(out.glob("*-cpu-smoke.json"))
    assert len(files) == 1 and str(files[0]) in printed
    report = json.loads(files[0].read_text())
    assert {"device", "torch", "commit", "throughput", "time_to_accuracy", "noisy_labels_paper"} <= report.keys()
    assert report["device"] == "cpu" and report["torch"] == torch.__version__ and report["smoke"] is True

    rows = report["throughput"]
    sizes = suite.SMOKE
    expected = {(s.loader, s.workers, s.precision, s.channels_last, s.compile, s.batch_size)
                for s in suite.throughput_settings(sizes)}
    assert {(r["loader"], r["workers"], r["precision"], r["channels_last"], r["compile"], r["batch_size"])
            for r in rows} == expected and len(rows) == len(expected) == 10
    assert all(r["img_per_s"] > 0 for r in rows)
    assert {r["compile_backend"] for r in rows if r["compile"]} == {"eager"}

    tta = report["time_to_accuracy"]
    assert tta["model"] == "tiny_cnn" and 1 <= tta["epochs"] <= sizes.tta_epochs and tta["seconds"] > 0
    assert 0.0 <= tta["test_acc"] <= 1.0 and len(tta["curve"]) == sizes.tta_epochs
    assert tta["reached"] == (tta["test_acc"] >= 0.92)

    paper = report["noisy_labels_paper"]
    assert paper["complete"] and paper["minutes"] > 0
    for arm in ("clean_ce", "noisy_ce", "noisy_coteach"):
        assert 0.0 <= paper[arm] <= 1.0 and paper["arms"][arm]["epochs"] == 1
    assert 0.0 <= paper["label_precision"] <= 1.0
    assert "--preset paper" in paper["command"]
    assert set(report["seconds"]) == {"throughput", "time_to_accuracy", "noisy_labels_paper", "total"}
