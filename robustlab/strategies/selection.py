"""Measuring sample selection: how clean the kept samples are, and how many clean ones were kept.

Small-loss methods (Co-Teaching, Co-teaching+, JoCoR) keep part of each batch. With the clean
training labels (measurement only, never used to train) we count per epoch:

- label precision: the fraction of kept samples whose noisy label equals the clean one;
- label recall: of the clean-labelled samples in the batches, the fraction that was kept.

A method with two selections per batch (one per network) passes both: each counts as one
selection of that batch, so recall is averaged over the two networks' selections.
"""
from __future__ import annotations

import torch


class SelectionMeter:
    """Accumulates kept / kept-clean / clean-in-batch counts over an epoch (on the device, no sync per step)."""

    def __init__(self, clean_labels: torch.Tensor | None):
        self.clean_labels = clean_labels  # a plain tensor: DDP must not broadcast it every step
        self.reset()

    def reset(self) -> None:
        self.counts = None  # tensor([kept, kept with a clean label, clean-labelled samples seen])

    def update(self, y: torch.Tensor, idx: torch.Tensor, *selections: torch.Tensor) -> None:
        """Record one batch: `selections` are positions in the batch (one tensor per selection)."""
        if self.clean_labels is None:
            return
        is_clean = self.clean_labels[idx] == y
        for kept in selections:
            batch = torch.stack([torch.tensor(len(kept), device=y.device), is_clean[kept].sum(), is_clean.sum()])
            self.counts = batch if self.counts is None else self.counts + batch

    def metrics(self) -> dict[str, float]:
        """{'label_precision', 'label_recall'} for the epoch so far; empty without clean labels or data."""
        if self.counts is None:
            return {}
        kept, kept_clean, clean_seen = self.counts.tolist()
        out = {}
        if kept:
            out["label_precision"] = kept_clean / kept
        if clean_seen:
            out["label_recall"] = kept_clean / clean_seen
        return out
