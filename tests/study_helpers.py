"""A noisy-label study of one method on a small slice of real CIFAR-10 (tiny_cnn, 200 / 100 / 200
images, 40% symmetric noise), as the end-to-end tests of the strategies run it."""
from __future__ import annotations

import csv
import json


def tiny_study_argv(method: str, data_dir, cache_dir, out, epochs: int = 2, *extra: str) -> list[str]:
    return ["--noise", "0.4", "--methods", method, "--epochs", str(epochs), "--train-size", "200", "--val-size", "100",
            "--test-size", "200", "--data-dir", str(data_dir), "--cache-dir", str(cache_dir),
            "--out", str(out), "--figures-dir", str(out / "fig"), "--quiet", "--model", "tiny_cnn", *extra]


def run_tiny_study(method: str, data_dir, cache_dir, out, epochs: int = 2, *extra: str) -> tuple[dict, dict]:
    """(table rows by arm, the record of the method's noisy arm) of a finished tiny study."""
    from studies import noisy_labels

    assert noisy_labels.main(tiny_study_argv(method, data_dir, cache_dir, out, epochs, *extra)) == 0
    rows = {r["arm"]: r for r in csv.DictReader(open(out / "table.csv"))}
    record = next(json.loads(p.read_text()) for p in (out / "records").glob("*.json")
                  if json.loads(p.read_text())["config"]["tag"] == f"noisy_{method}")
    return rows, record
