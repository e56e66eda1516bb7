"""Atomic writes of JSON, text, checkpoints and run records: a write that fails midway leaves the old
file intact and no temporary file behind; checkpoints load without running pickled code."""
from __future__ import annotations

import io
import json
import os

import pytest
import torch

from robustlab import fileio
from robustlab.checkpoint import load_checkpoint, save_checkpoint
from robustlab.errors import UsageError
from robustlab.records import config_hash, find_record, load_records, read_record, record_path, write_record
from robustlab.schedules import SCHEDULES, OptimConfig, build_optimizer, build_scheduler


def _folder_listing(path):
    return sorted(p.name for p in path.iterdir())


class Boom(Exception):
    pass


def test_a_writer_failing_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    fileio.write_json(target, {"version": 1})

    def half_then_fail(f):
        f.write(b'{"version": ')
        raise Boom("disk full")

    with pytest.raises(Boom):
        fileio.atomic_write(target, half_then_fail)
    assert json.loads(target.read_text()) == {"version": 1}
    assert _folder_listing(tmp_path) == ["out.json"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failing_fsync_or_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    target = tmp_path / "notes.txt"
    fileio.write_text(target, "old")

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, failing, fail)
    with pytest.raises(OSError):
        fileio.write_text(target, "new")
    assert target.read_text() == "old" and _folder_listing(tmp_path) == ["notes.txt"]


def test_the_data_is_flushed_and_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    fileio.write_text(tmp_path / "a" / "b.txt", "hello")  # missing parent folders are created
    assert events == [("fsync", 5), ("replace", "b.txt")]
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"


def test_json_round_trip_sorted_keys_and_a_corrupt_file_is_named(tmp_path):
    path = tmp_path / "r.json"
    fileio.write_json(path, {"b": 1, "a": [1.5, None], "p": tmp_path})
    assert path.read_text() == json.dumps({"a": [1.5, None], "b": 1, "p": str(tmp_path)}, indent=1, sort_keys=True)
    assert fileio.read_json(path) == {"a": [1.5, None], "b": 1, "p": str(tmp_path)}
    path.write_text('{"a": [1.5')
    with pytest.raises(UsageError) as info:
        fileio.read_json(path)
    assert str(info.value) == f"{path} is corrupt or truncated (JSONDecodeError); delete it to recompute"


# ---- checkpoints ------------------------------------------------------------------------------

def test_a_failing_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"strategy": {"w": torch.ones(3)}, "epoch": 1})
    monkeypatch.setattr(fileio.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("interrupted")))
    with pytest.raises(OSError):
        save_checkpoint(path, {"strategy": {"w": torch.zeros(3)}, "epoch": 2})
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["strategy"]["w"], torch.ones(3))
    assert _folder_listing(tmp_path) == ["last.pt"]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_an_engine_style_checkpoint_of_every_schedule_loads_with_weights_only(tmp_path, schedule):
    net = torch.nn.Linear(2, 2)
    cfg = OptimConfig(schedule=schedule)
    opt = build_optimizer(net.parameters(), cfg)
    sched = build_scheduler(opt, cfg, 3, 4)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step(1.0) if schedule == "plateau" else sched.step()
    state = {"strategy": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "epoch": 0, "history": [{"epoch": 1, "train_loss": 0.5, "lr": 0.1}], "best": {"epoch": -1, "score": -1e9},
             "stale": 0, "elapsed": 1.0, "rng_cpu": torch.get_rng_state(), "rng_cuda": None,
             "stopped_early": False, "config": {"epochs": 3, "optim": {"milestones": [50, 75]}}}
    save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "last.pt")
    sched2 = build_scheduler(build_optimizer(torch.nn.Linear(2, 2).parameters(), cfg), cfg, 3, 4)
    sched2.load_state_dict(loaded["scheduler"])
    assert sched2.state_dict() == sched.state_dict() and loaded["history"] == state["history"]


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    buffer = io.BytesIO()
    torch.save({"strategy": {}, "payload": RunsCode()}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UsageError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"checkpoint {path} is unreadable or corrupt (UnpicklingError)"
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content, message", [
    (None, "checkpoint {path} does not exist"),
    (b"\x00garbage", "checkpoint {path} is unreadable or corrupt (UnpicklingError)"),
    ("list", "{path} is not a robustlab checkpoint"),
    ("no-strategy", "{path} is not a robustlab checkpoint"),
])
def test_unusable_checkpoints_are_named(tmp_path, content, message):
    path = tmp_path / "c.pt"
    if content == "list":
        torch.save([torch.ones(1)], path)
    elif content == "no-strategy":
        torch.save({"model": {}}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError) as info:
        load_checkpoint(path)
    assert str(info.value) == message.format(path=path)


# ---- run records ------------------------------------------------------------------------------

def test_a_failing_record_write_keeps_the_old_record(tmp_path, monkeypatch):
    record = {"run_id": "ce-s0-abc", "config": {"seed": 0}, "metrics": {"test_acc": 0.5}}
    path = write_record(tmp_path, record)
    assert path == record_path(tmp_path, "ce-s0-abc") == tmp_path / "records" / "ce-s0-abc.json"
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError):
        write_record(tmp_path, {**record, "metrics": {"test_acc": 0.9}})
    assert find_record(tmp_path, "ce-s0-abc") == record
    assert _folder_listing(tmp_path / "records") == ["ce-s0-abc.json"]


def test_records_are_found_listed_and_checked(tmp_path):
    assert find_record(tmp_path, "nope") is None and load_records(tmp_path) == []
    for run_id in ("b-s0-2", "a-s0-1"):
        write_record(tmp_path, {"run_id": run_id, "config": {}, "metrics": {}})
    assert [r["run_id"] for r in load_records(tmp_path)] == ["a-s0-1", "b-s0-2"]  # sorted by file name
    partial = tmp_path / "records" / "c.json"
    partial.write_text(json.dumps({"run_id": "c", "config": {}}))
    with pytest.raises(UsageError) as info:
        read_record(partial)
    assert str(info.value) == f"{partial} is not a complete run record; delete it to recompute the run"
    with pytest.raises(UsageError):
        load_records(tmp_path)


def test_config_hash_is_order_independent_and_value_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    import hashlib

    assert config_hash({"a": 1}) == hashlib.sha1(b'{"a": 1}').hexdigest()[:12]


# ---- the temporary file, nested folders, interrupts ---------------------------------------------

def test_the_temporary_file_is_hidden_next_to_the_target_and_not_a_record(tmp_path):
    # same folder (so the rename is atomic), a dot name ending in .tmp (so `*.json` globs skip it)
    write_record(tmp_path, {"run_id": "old", "config": {}, "metrics": {}})
    target = tmp_path / "records" / "new.json"
    seen = {}

    def write(f):
        seen["listing"] = _folder_listing(target.parent)
        seen["records"] = [r["run_id"] for r in load_records(tmp_path)]
        f.write(b"{}")

    fileio.atomic_write(target, write)
    temps = [name for name in seen["listing"] if name != "old.json"]
    assert len(temps) == 1 and temps[0].startswith(".new.json.") and temps[0].endswith(".tmp")
    assert seen["records"] == ["old"]  # a record being written is never listed
    assert _folder_listing(target.parent) == ["new.json", "old.json"]


def test_missing_parent_folders_are_created_at_any_depth_and_an_existing_one_is_reused(tmp_path):
    deep = tmp_path / "a" / "b" / "c" / "x.txt"
    fileio.write_text(deep, "1")
    fileio.write_text(deep.with_name("y.txt"), "2")  # the folder exists now
    assert deep.read_text() == "1" and _folder_listing(deep.parent) == ["x.txt", "y.txt"]


def test_an_interrupt_right_after_the_rename_propagates_unchanged(tmp_path, monkeypatch):
    # Ctrl-C between the rename and the return: the temp file is already gone, the cleanup must not
    # turn the KeyboardInterrupt into a FileNotFoundError.
    real_replace = os.replace

    def replace_then_interrupt(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(fileio.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fileio.write_text(tmp_path / "n.txt", "new")
    assert (tmp_path / "n.txt").read_text() == "new" and _folder_listing(tmp_path) == ["n.txt"]


def test_an_interrupt_inside_the_writer_removes_the_temp_file(tmp_path):
    def interrupted(f):
        f.write(b"part")
        raise KeyboardInterrupt  # a BaseException, not an Exception

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(tmp_path / "k.bin", interrupted)
    assert _folder_listing(tmp_path) == []


def test_text_and_bytes_are_written_exactly(tmp_path):
    fileio.write_text(tmp_path / "u.txt", "π ≈ 3.14\n")
    assert (tmp_path / "u.txt").read_bytes() == "π ≈ 3.14\n".encode()
    fileio.atomic_write(tmp_path / "b.bin", lambda f: f.write(b"\x00\xff"))
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"


def test_a_file_that_is_not_utf8_is_named_as_corrupt(tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(UsageError) as info:
        fileio.read_json(path)
    assert str(info.value) == f"{path} is corrupt or truncated (UnicodeDecodeError); delete it to recompute"


# ---- checkpoints: device mapping, weights_only regardless of the environment --------------------

def test_a_checkpoint_is_mapped_to_the_requested_device_and_to_the_cpu_by_default(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"strategy": {"w": torch.arange(3.0)}, "epoch": 4})
    assert load_checkpoint(path)["strategy"]["w"].device == torch.device("cpu")
    meta = load_checkpoint(path, map_location="meta")  # the engine passes its device on resume
    assert meta["strategy"]["w"].device.type == "meta" and meta["strategy"]["w"].shape == (3,)
    assert meta["epoch"] == 4


def test_a_checkpoint_that_would_run_code_is_refused_even_when_the_environment_allows_unsafe_loads(
        tmp_path, monkeypatch):
    # torch.load honours TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only when weights_only is not passed:
    # load_checkpoint passes weights_only=True explicitly.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = tmp_path / "evil.pt"
    torch.save({"strategy": {}, "payload": RunsCode()}, path)
    with pytest.raises(UsageError, match="is unreadable or corrupt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UsageError) as info:
        load_checkpoint(tmp_path)
    assert str(info.value) == f"checkpoint {tmp_path} does not exist"


# ---- records: partial or non-object files, the environment block, hashing any value -------------

@pytest.mark.parametrize("content", [[1, 2], {"run_id": "r", "metrics": {}}, {"run_id": "r", "config": {}},
                                     {"config": {}, "metrics": {}}])
def test_a_record_that_is_not_an_object_with_run_id_config_and_metrics_is_refused(tmp_path, content):
    path = tmp_path / "records" / "r.json"
    fileio.write_json(path, content)
    with pytest.raises(UsageError) as info:
        read_record(path)
    assert str(info.value) == f"{path} is not a complete run record; delete it to recompute the run"
    extra = {"run_id": "r", "config": {}, "metrics": {}, "notes": "more keys are fine"}
    fileio.write_json(path, extra)
    assert read_record(path) == extra == find_record(tmp_path, "r")


def test_config_hash_of_values_json_cannot_encode_uses_their_text(tmp_path):
    import hashlib

    expected = hashlib.sha1(json.dumps({"dir": str(tmp_path)}).encode()).hexdigest()[:12]
    assert config_hash({"dir": tmp_path}) == expected == config_hash({"dir": str(tmp_path)})


def _fake_platform(monkeypatch, processor):
    """Fixed platform answers, and stand-in timm / torchvision modules (importing timm takes seconds)."""
    import sys
    import types

    from robustlab import records

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(__version__="timm-v"))
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(__version__="tv-v"))
    monkeypatch.setattr(records.platform, "processor", lambda: processor)
    monkeypatch.setattr(records.platform, "machine", lambda: "machine-arch")
    monkeypatch.setattr(records.platform, "node", lambda: "node-name")
    monkeypatch.setattr(records.platform, "python_version", lambda: "3.99.1")


@pytest.mark.parametrize("processor, device", [("cpu-model", "cpu-model"), ("", "machine-arch")])
def test_environment_names_versions_host_and_the_cpu_without_cuda(monkeypatch, processor, device):
    from robustlab.records import environment

    _fake_platform(monkeypatch, processor)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: pytest.fail("no CUDA device to name"))
    assert environment() == {"python": "3.99.1", "torch": torch.__version__, "torchvision": "tv-v",
                             "timm": "timm-v", "device": device, "host": "node-name"}


def test_environment_names_the_first_cuda_device(monkeypatch):
    from robustlab.records import environment

    _fake_platform(monkeypatch, "cpu-model")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU #{i}")
    assert environment()["device"] == "GPU #0"
