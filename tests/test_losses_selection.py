"""SelectionMeter: label precision / recall of a sample selection, counted by hand on toy batches."""
import pytest
import torch

from robustlab.strategies.selection import SelectionMeter

# dataset of 8 samples: the noisy labels given to the batches, and the clean ones (measurement only)
CLEAN = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
NOISY = torch.tensor([0, 1, 0, 3, 2, 1, 2, 0])  # samples 2, 4 and 7 are mislabelled


def batch(ids):
    idx = torch.tensor(ids)
    return NOISY[idx], idx


def test_precision_and_recall_by_hand_over_two_batches():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([0, 1, 2, 3])            # clean: 0, 1, 3 (3 of 4)
    meter.update(y, idx, torch.tensor([0, 2]))  # keeps samples 0 (clean) and 2 (noisy)
    y, idx = batch([7, 6, 5, 4])            # clean: 6, 5 (2 of 4)
    meter.update(y, idx, torch.tensor([1, 2, 3]))  # positions -> samples 6, 5 (clean), 4 (noisy)
    # kept 5, of which clean 3 (samples 0, 6, 5); clean samples seen 3 + 2 = 5
    assert meter.metrics() == {"label_precision": 3 / 5, "label_recall": 3 / 5}
    assert meter.counts.tolist() == [5, 3, 5]


def test_positions_index_the_batch_not_the_dataset():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([4, 0])                   # sample 4 is noisy, sample 0 is clean
    meter.update(y, idx, torch.tensor([1]))  # position 1 = sample 0, clean
    assert meter.metrics() == {"label_precision": 1.0, "label_recall": 1.0}
    meter.reset()
    meter.update(y, idx, torch.tensor([0]))  # position 0 = sample 4, mislabelled (dataset sample 0 is clean)
    assert meter.metrics() == {"label_precision": 0.0, "label_recall": 0.0}


def test_two_selections_of_one_batch_each_count_once():
    # Co-Teaching: each network selects from the same batch; recall averages over both selections.
    meter = SelectionMeter(CLEAN)
    y, idx = batch([0, 1, 2, 3])             # 3 clean samples
    meter.update(y, idx, torch.tensor([0, 1, 3]), torch.tensor([2]))
    # kept 3 + 1 = 4, kept clean 3 + 0 = 3, clean seen 3 + 3 = 6
    assert meter.counts.tolist() == [4, 3, 6]
    assert meter.metrics() == {"label_precision": pytest.approx(3 / 4), "label_recall": pytest.approx(3 / 6)}


def test_without_clean_labels_or_data_there_are_no_metrics():
    meter = SelectionMeter(None)
    y, idx = batch([0, 1])
    meter.update(y, idx, torch.tensor([0, 1]))
    assert meter.counts is None and meter.metrics() == {}
    assert SelectionMeter(CLEAN).metrics() == {}


def test_an_empty_selection_has_recall_but_no_precision():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([0, 2])                   # one clean sample, nothing kept
    meter.update(y, idx, torch.tensor([], dtype=torch.long))
    assert meter.counts.tolist() == [0, 0, 1]
    assert meter.metrics() == {"label_recall": 0.0}


def test_a_batch_without_clean_labels_has_precision_but_no_recall():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([2, 4, 7])                # all three mislabelled
    meter.update(y, idx, torch.tensor([0, 2]))
    assert meter.counts.tolist() == [2, 0, 0]
    assert meter.metrics() == {"label_precision": 0.0}


def test_reset_starts_a_new_epoch():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([2, 4])
    meter.update(y, idx, torch.tensor([0, 1]))
    assert meter.metrics() == {"label_precision": 0.0}
    meter.reset()
    assert meter.counts is None and meter.metrics() == {}
    y, idx = batch([0, 1])
    meter.update(y, idx, torch.tensor([0, 1]))
    assert meter.metrics() == {"label_precision": 1.0, "label_recall": 1.0}  # the first epoch's counts are gone


def test_counts_stay_on_the_labels_device_as_integers():
    meter = SelectionMeter(CLEAN)
    y, idx = batch([0, 1, 2])
    meter.update(y, idx, torch.tensor([0, 1, 2]))
    assert meter.counts.dtype == torch.int64
    assert isinstance(meter.metrics()["label_precision"], float)
    # no host sync per step: the counts live where the labels are (the meta device stands in for a GPU here;
    # a count made on the CPU could not be stacked with them)
    meta = SelectionMeter(CLEAN.to("meta"))
    meta.update(y.to("meta"), idx.to("meta"), torch.tensor([0, 1], device="meta"))
    assert meta.counts.device.type == "meta" and meta.counts.shape == (3,)
