"""`load_dataset`: find the data, decode it once into the cache, and read it from the cache afterwards."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from skqk.data.cache import cache_file, cache_root, read_cache, write_cache
from skqk.data.dataset import DataError, Dataset
from skqk.data.download import CIFAR10_ARCHIVE, download_cifar10
from skqk.data.sources import read_source, source_signature
from skqk.data.tables import TableSpec, is_table, read_table

DATA_ENV = "SKQK_DATA"


def load_dataset(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    progress: bool = True,
    table: TableSpec | None = None,
) -> Dataset:
    """Load a train/test dataset into memory: images (decoded only on the first load) or a table.

    Args:
        data_dir: the data, read-only is fine: a ``cifar-10-batches-py`` folder or its parent, the official
            ``cifar-10-python.tar.gz``, an image-folder tree ``ROOT/{train,test}/<class>/<image>`` or its
            parent, or a tar archive of such a tree; or a table: a ``.csv`` or ``.parquet`` file (read as
            `table` says) or an ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test`` (`skqk.data.tables`).
            None: $SKQK_DATA, else CIFAR-10 from the cache folder, downloaded there if missing.
        cache_dir: writable folder for decoded datasets and the download. None: $SKQK_CACHE, else
            ~/.cache/skqk.
        download: whether CIFAR-10 may be downloaded when no data is given or cached.
        progress: show progress bars while downloading and decoding.
        table: for a table, its target column, features, task and split (an .npz: its task).

    Returns:
        The dataset, with normalization statistics from its train split.

    Raises:
        DataError: the data is missing, ambiguous, malformed, or cannot be downloaded.

    Example:
        >>> data = load_dataset()  # CIFAR-10
        >>> data.train.images.shape, data.num_classes, data.source
    """
    root = cache_root(cache_dir)
    source = locate_source(data_dir, root, download, progress)
    if is_table(source):  # read in seconds at most: not cached
        return read_table(source, table or TableSpec())
    if table is not None:
        raise DataError(f"{source} holds images, labelled by class folders: a target or task is for tables")
    path = cache_file(root, source, source_signature(source))
    dataset = read_cache(path)
    if dataset is None:
        dataset = read_source(source, progress)
        write_cache(dataset, path)
    if dataset.num_classes == 1:  # training "works" and reaches accuracy 1.0, which means nothing
        warnings.warn(
            f"{dataset.source} has a single class, {dataset.train.classes[0]!r}: accuracy is trivially 1.0",
            stacklevel=2,
        )
    return dataset


def locate_source(data_dir: str | os.PathLike | None, root: Path, download: bool, progress: bool) -> Path:
    """The data to read: `data_dir`, else $SKQK_DATA, else CIFAR-10 in the cache `root`, downloaded if allowed."""
    given = data_dir or os.environ.get(DATA_ENV)
    if given:
        path = Path(given).expanduser().absolute()
        if not path.exists():
            raise DataError(f"data path {path} does not exist")
        return path
    archive = root / CIFAR10_ARCHIVE
    if archive.exists():
        return archive
    if not download:
        raise DataError(f"no data: pass a data path or set ${DATA_ENV}, or allow downloading CIFAR-10 to {root}")
    return download_cifar10(archive, progress)
