"""Datasets fully in memory (uint8 images, or tables of float32 features), with deterministic subsets, epoch
orders and batches; `load_dataset` reads image folders, CIFAR-10, CSV/Parquet tables and .npz arrays, `from_torch`
any torch Dataset of (tensor, target) pairs.

Example:
    >>> from skqk import data
    >>> ds = data.load_dataset()  # $SKQK_DATA, else CIFAR-10 (downloaded once into ~/.cache/skqk)
    >>> train_idx = data.subset_indices(ds.train.labels, 5000, seed=0, balanced=True)
    >>> for x, y, idx in data.batches(ds.train, ds, data.epoch_order(train_idx, seed=0, epoch=0), 128):
    ...     pass
"""

from skqk.data.dataset import DataError, Dataset, ImageData, TableData, content_fingerprint
from skqk.data.loading import load_dataset
from skqk.data.sampling import batches, epoch_order, subset_fingerprint, subset_indices
from skqk.data.tables import TableSpec
from skqk.data.torch_datasets import from_torch

__all__ = [
    "DataError",
    "Dataset",
    "ImageData",
    "TableData",
    "TableSpec",
    "batches",
    "content_fingerprint",
    "epoch_order",
    "from_torch",
    "load_dataset",
    "subset_fingerprint",
    "subset_indices",
]
