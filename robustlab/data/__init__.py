"""Datasets as uint8 tensors, deterministic splits, and a device-resident batch loader."""
from robustlab.data.augment import AugmentConfig, BatchAugment, Normalize
from robustlab.data.datasets import ImageDataset, load_dataset
from robustlab.data.loader import DeviceLoader
from robustlab.data.splits import DataSplits, make_splits

__all__ = ["AugmentConfig", "BatchAugment", "DataSplits", "DeviceLoader", "ImageDataset", "Normalize",
           "load_dataset", "make_splits"]
