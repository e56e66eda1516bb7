"""robustlab.robustness on runs: run labels, the splits rebuilt from a record, evaluation of
several runs (grouped by test split), loading a run's classifier and finding finished runs."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

from conftest import write_tiny_cifar10
from robustlab.calibration import fit_temperature
from robustlab.errors import UsageError
from robustlab.experiment import Context, ExperimentConfig, run_experiment
from robustlab.robustness import (ModelSpec, evaluate_runs, finished_checkpoints, generated_corruptions,
                                  evaluate_corruptions, load_classifier, load_released, predict_logits, run_eval_splits, run_labels)
from robustlab.robustness import _run_splits


def _message(call) -> str:
    with pytest.raises(UsageError) as info:
        call()
    return str(info.value)


def test_run_labels_tag_or_model_then_run_hash_then_checkpoint_name():
    def rec(tag, model, seed, run_id):
        return {"config": {"tag": tag, "model": model, "seed": seed}, "run_id": run_id}
    records = [rec("ce", "m", 0, "ce-s0-aaa"), rec("", "resnet", 0, "x-s0-bbb"), rec("ce", "m", 1, "ce-s1-ccc"),
               rec("ce", "m", 0, "ce-s0-ddd")]
    assert run_labels(records, ["a/last.pt"] * 4) == ["ce-aaa", "resnet", "ce", "ce-ddd"]
    # the same run twice (last.pt and best.pt): the hash is shared, the checkpoint name tells them apart
    twice = [rec("ce", "m", 0, "ce-s0-aaa"), rec("ce", "m", 0, "ce-s0-aaa"), rec("ce", "m", 1, "ce-s1-aaa")]
    assert run_labels(twice, ["r/last.pt", "r/best.pt", "r/last.pt"]) == ["ce-aaa-last", "ce-aaa-best", "ce"]


# ---- runs rebuilt from hand-written records (no training) -------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_tiny_cifar10(root / "data")  # 100 training, 40 test images of 10 classes
    return data, Context(data_dir=str(data.root), cache_dir=str(root / "cache"), device="cpu", quiet=True)


def record(seed=0, **data):
    cfg = {"dataset": "cifar10", "val_size": 20, "train_size": None, "test_size": None, "noise_type": "symmetric",
           "noise_rate": 0.0, "noisy_val": False, "noise_file": None, **data}
    return {"config": {"data": cfg, "seed": seed}, "data": {"classes": [str(i) for i in range(10)]}}


def test_eval_splits_test_size_only_shrinks_the_runs_test_split(tiny):
    _, ctx = tiny
    val, test = run_eval_splits(record(), ctx)
    assert len(val) == 20 and len(test) == 40
    assert len(run_eval_splits(record(), ctx, test_size=20)[1]) == 20
    assert len(run_eval_splits(record(test_size=30), ctx, test_size=20)[1]) == 20
    assert len(run_eval_splits(record(test_size=20), ctx, test_size=30)[1]) == 20   # never more than the run saw
    assert len(run_eval_splits(record(test_size=20), ctx, test_size=20)[1]) == 20
    # a field a newer version wrote (unknown here) is left out
    assert len(run_eval_splits(record(obsolete=1), ctx)[1]) == 40


def test_eval_splits_leave_training_noise_out_unless_validation_was_noisy(tiny):
    _, ctx = tiny
    clean_val, _ = run_eval_splits(record(), ctx)
    # the training-label noise is not rebuilt: a noise file that is gone does not matter
    val, _ = run_eval_splits(record(noise_rate=0.4, noise_file="/nonexistent/labels.csv"), ctx)
    assert torch.equal(val.labels, clean_val.labels)
    val, _ = run_eval_splits(record(noise_type="human:aggre", noise_rate=0.4), ctx)
    assert torch.equal(val.labels, clean_val.labels)
    noisy_val, _ = run_eval_splits(record(noise_rate=0.6, noisy_val=True), ctx)
    assert not torch.equal(noisy_val.labels, clean_val.labels) and torch.equal(noisy_val.images, clean_val.images)


class Pixels(torch.nn.Module):
    """A fixed linear classifier of a 4 x 4 average-pooled image."""

    def __init__(self, seed):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(48, 10)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 48, generator=g) * 3)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.25, 0.25)


def test_evaluate_runs_groups_runs_by_test_split_and_fits_temperatures_on_validation(tiny):
    _, ctx = tiny
    runs = [(record(seed=0), ModelSpec(Pixels(1), MEAN, STD)), (record(seed=0), ModelSpec(Pixels(2), MEAN, STD)),
            (record(seed=1, val_size=0, test_size=20), ModelSpec(Pixels(1), MEAN, STD))]
    out = evaluate_runs(runs, ["a", "b", "a"], ctx, ["contrast", "gaussian_noise"], corruption_seed=5, test_size=30)
    assert set(out.scores) == {("a", 0), ("b", 0), ("a", 1)} and out.test_sizes == {30, 20}
    assert [(r["model"], r["seed"]) for r in out.calibration] == [("a", 0), ("b", 0), ("a", 1)]
    val, test = run_eval_splits(record(seed=0), ctx, test_size=30)
    # the scores are those of evaluate_corruptions on the run's test split with the corruption seed
    for key, spec in (("a", 0), runs[0][1]), (("b", 0), runs[1][1]):
        alone = evaluate_corruptions({key: spec}, test.images, test.labels,
                                     generated_corruptions(test.images, test.labels, ["contrast", "gaussian_noise"], 5))
        assert out.scores[key] == alone[key]
        z = predict_logits(spec, test.images.float() / 255)
        assert torch.equal(out.clean_logits[key][0], z) and torch.equal(out.clean_logits[key][1], test.labels)
        t = fit_temperature(predict_logits(spec, val.images.float() / 255), val.labels)
        row = next(r for r in out.calibration if (r["model"], r["seed"]) == key)
        assert row["temperature"] == pytest.approx(t, rel=1e-9)
    assert out.calibration[2]["temperature"] is None and out.calibration[2]["test_ece_ts"] is None  # no validation split
    other = evaluate_runs(runs[:1], ["a"], ctx, ["gaussian_noise"], corruption_seed=6, test_size=30)
    assert other.scores[("a", 0)].acc != out.scores[("a", 0)].acc or other.scores[("a", 0)].ece != out.scores[("a", 0)].ece


def _release_of(images_hwc, labels, path, blocks=None):
    """A CIFAR-10-C layout in `path`: fog.npy with five severity blocks (`blocks`, default the clean
    images five times) and labels.npy (the labels tiled five times)."""
    import numpy as np

    np.save(path / "fog.npy", np.concatenate(blocks if blocks is not None else [images_hwc] * 5))
    np.save(path / "labels.npy", np.tile(np.asarray(labels), 5).astype(np.uint8))


def _tiny_test_hwc(data):
    return data.test_data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def test_release_rows_are_the_runs_own_test_images_so_identical_blocks_score_as_clean(tiny, tmp_path):
    import numpy as np

    data, ctx = tiny
    clean = _tiny_test_hwc(data)  # the 40-image test set in its order, as a release of it would be
    _release_of(clean, data.test_labels, tmp_path)
    runs = [(record(), ModelSpec(Pixels(1), MEAN, STD)), (record(), ModelSpec(Pixels(3), MEAN, STD))]
    calls = []
    out = evaluate_runs(runs, ["a", "b"], ctx, ["fog"], released=tmp_path, test_size=10, autocast=lambda: _Count(calls))
    splits = _run_splits(record(), ctx, test_size=10)
    index = splits.test_index
    assert len(index) == 10 and index.tolist() != list(range(10))  # a class-balanced subset, not the first rows
    assert torch.equal(splits.test.images, torch.from_numpy(data.test_data[index].reshape(-1, 3, 32, 32)))
    for key in ("a", 0), ("b", 0):
        scores = out.scores[key]
        # every block holds the clean images: corrupted accuracy and ECE equal the clean ones exactly
        assert [scores.acc[("fog", s)] for s in range(1, 6)] == [scores.clean_acc] * 5
        assert [scores.ece[("fog", s)] for s in range(1, 6)] == [scores.clean_ece] * 5
    assert not torch.equal(out.clean_logits[("a", 0)][0], out.clean_logits[("b", 0)][0])  # two different models
    assert len(calls) == 2 * (1 + 5) + 2  # autocast per model: the clean batch, every severity, the validation logits

    # Distinct blocks: severity s scores exactly the rows `index` of block s.
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 256, clean.shape, dtype=np.uint8) for _ in range(5)]
    _release_of(clean, data.test_labels, tmp_path, blocks)
    out = evaluate_runs(runs[:1], ["a"], ctx, ["fog"], released=tmp_path, test_size=10)
    y = torch.from_numpy(data.test_labels[index])
    for severity, block in enumerate(blocks, 1):
        x = torch.from_numpy(block[index]).permute(0, 3, 1, 2).float() / 255
        z = predict_logits(runs[0][1], x)
        assert out.scores[("a", 0)].acc[("fog", severity)] == pytest.approx(float((z.argmax(1) == y).float().mean()))


def test_a_release_that_is_not_the_runs_test_set_in_order_is_refused(tiny, tmp_path):
    import numpy as np

    data, ctx = tiny
    clean = _tiny_test_hwc(data)
    runs = [(record(), ModelSpec(Pixels(1), MEAN, STD))]
    # the test set in another order (e.g. an image-folder copy, sorted by class): labels disagree
    order = np.argsort(data.test_labels, kind="stable")
    _release_of(clean[order], data.test_labels[order], tmp_path)
    message = _message(lambda: evaluate_runs(runs, ["a"], ctx, ["fog"], released=tmp_path, test_size=10))
    assert message.startswith(f"{tmp_path / 'labels.npy'} does not match the run's test labels (severity 1, evaluated image ")
    assert message.endswith("the released files are the test set in its original order, and so must the run's test "
                            "set be (the torchvision pickles are; an image-folder copy is in class order)")
    # a release shorter than the test set: the rows of the later test images do not exist
    _release_of(clean[:12], data.test_labels[:12], tmp_path)
    assert _message(lambda: evaluate_runs(runs, ["a"], ctx, ["fog"], released=tmp_path)) == (
        f"{tmp_path / 'fog.npy'} holds 12 images per severity, fewer than the test set evaluated (image 39 asked for): "
        "the released files must be the whole test set")
    # labels beyond the run's classes are refused
    _release_of(clean, np.full(40, 10), tmp_path)
    with pytest.raises(UsageError, match=r"labels outside 0\.\.9"):
        evaluate_runs(runs, ["a"], ctx, ["fog"], released=tmp_path)


class _Count:
    def __init__(self, calls):
        self.calls = calls

    def __enter__(self):
        self.calls.append(1)

    def __exit__(self, *exc):
        return False


# ---- a trained run --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    data, ctx = tiny
    cfg = ExperimentConfig(model="tiny_cnn", seed=0, tag="t")
    cfg.data.val_size, cfg.train.epochs, cfg.train.batch_size, cfg.train.tta = 20, 1, 50, "none"
    results = tmp_path_factory.mktemp("results")
    rec = run_experiment(cfg, results, ctx)
    return results, rec


def test_load_classifier_returns_the_record_and_the_network_in_eval_mode(trained, tmp_path):
    results, rec = trained
    record, spec = load_classifier(rec["checkpoint"], "cpu")
    assert record["run_id"] == rec["run_id"] and not spec.model.training
    assert list(spec.mean) == list(rec["data"]["mean"]) and list(spec.std) == list(rec["data"]["std"])
    assert next(spec.model.parameters()).device.type == "cpu"
    assert next(load_classifier(rec["checkpoint"], "meta")[1].model.parameters()).device.type == "meta"  # moved there
    missing = tmp_path / "last.pt"
    assert _message(lambda: load_classifier(missing, "cpu")) == f"checkpoint {missing} does not exist"


def _copy_results(results, tmp_path, strategy=None, drop_checkpoint=False):
    out = tmp_path / "copy"
    shutil.copytree(results, out)
    if strategy or drop_checkpoint:
        for path in (out / "records").glob("*.json"):
            rec = json.loads(path.read_text())
            if strategy:
                rec["config"]["strategy"] = {"name": strategy, "options": {}}
            path.write_text(json.dumps(rec))
            if drop_checkpoint:
                (out / "runs" / rec["run_id"] / "last.pt").unlink()
    return out


def test_finished_checkpoints_lists_classifier_runs_with_a_last_checkpoint(trained, tmp_path):
    results, rec = trained
    assert finished_checkpoints(results) == [results / "runs" / rec["run_id"] / "last.pt"]
    for kwargs in ({"drop_checkpoint": True}, {"strategy": "supcon_pretrain"}):
        shutil.rmtree(tmp_path / "copy", ignore_errors=True)
        copy_dir = _copy_results(results, tmp_path, **kwargs)
        assert _message(lambda: finished_checkpoints(copy_dir)) == (
            f"{copy_dir}: no finished classifier run (records/<run_id>.json with runs/<run_id>/last.pt)")


def test_a_pretraining_run_is_refused_by_name(trained, tmp_path):
    results, rec = trained
    copy_dir = _copy_results(results, tmp_path, strategy="supcon_pretrain")
    ckpt = copy_dir / "runs" / rec["run_id"] / "last.pt"
    assert _message(lambda: load_classifier(ckpt, "cpu")) == (
        f"{ckpt} is a 'supcon_pretrain' run, which trains no classifier; robustness evaluates classifier runs")


def test_evaluate_runs_passes_the_device_on(tiny, tmp_path, monkeypatch):
    # (a CPU-only test: every step of the evaluation is told the device, and the validation batches are the defaults')
    import numpy as np

    import robustlab.robustness as R

    _, ctx = tiny
    seen = []

    seeds = []

    def spy(name, position, original):
        def wrapper(*a, **k):
            seen.append((name, a[position], a[position + 1] if name == "_uint8_batches" else None))
            if name == "generated_corruptions":
                seeds.append(a[3])
            return original(*a, **k)
        monkeypatch.setattr(R, name, wrapper)
    spy("generated_corruptions", 4, R.generated_corruptions)
    spy("released_corruptions", 2, R.released_corruptions)
    spy("evaluate_corruptions", 4, R.evaluate_corruptions)
    spy("_uint8_batches", 2, R._uint8_batches)
    runs = [(record(), ModelSpec(Pixels(1), MEAN, STD))]
    evaluate_runs(runs, ["a"], ctx, ["contrast"], device="cpu", test_size=10, corruption_seed=3)
    _release_of(_tiny_test_hwc(tiny[0]), tiny[0].test_labels, tmp_path)
    evaluate_runs(runs, ["a"], ctx, ["fog"], device="cpu", released=tmp_path, test_size=10)
    # made with the device as given (not as torch.device): the release's five severities and the validation batches
    outside = [s for s in seen if s[0] != "_uint8_batches" or isinstance(s[1], str)]
    assert outside == [("generated_corruptions", "cpu", None), ("evaluate_corruptions", "cpu", None),
                       ("_uint8_batches", "cpu", 500), ("released_corruptions", "cpu", None),
                       ("evaluate_corruptions", "cpu", None)] + [("_uint8_batches", "cpu", 500)] * 6
    evaluate_runs(runs, ["a"], ctx, ["contrast"], test_size=10)
    assert seeds == [3, 0]  # the corruption seed given, else 0
