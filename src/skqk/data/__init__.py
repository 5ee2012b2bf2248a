"""Datasets fully in memory as uint8 tensors, with deterministic subsets, epoch orders and batches.

Example:
    >>> from skqk import data
    >>> ds = data.load_dataset()  # $SKQK_DATA, else CIFAR-10 (downloaded once into ~/.cache/skqk)
    >>> train_idx = data.subset_indices(ds.train.labels, 5000, seed=0, balanced=True)
    >>> for x, y, idx in data.batches(ds.train, ds, data.epoch_order(train_idx, seed=0, epoch=0), 128):
    ...     pass
"""

from skqk.data.dataset import DataError, Dataset, ImageData, content_fingerprint
from skqk.data.loading import load_dataset
from skqk.data.sampling import batches, epoch_order, subset_fingerprint, subset_indices

__all__ = [
    "DataError",
    "Dataset",
    "ImageData",
    "batches",
    "content_fingerprint",
    "epoch_order",
    "load_dataset",
    "subset_fingerprint",
    "subset_indices",
]
