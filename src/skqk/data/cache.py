"""The decoded-dataset cache: one torch file per source, so only the first load pays for decoding.

Files are keyed by the source's signature (path, sizes, modification times), written atomically, and read
with ``torch.load(weights_only=True)``; an unreadable or inconsistent file is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from skqk.atomic import atomic_write
from skqk.data.dataset import Dataset, ImageData

CACHE_ENV = "SKQK_CACHE"
DEFAULT_CACHE = Path("~/.cache/skqk")
CACHE_FORMAT = 2  # bump when the decoding or the file layout changes, so old files are ignored


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $SKQK_CACHE, else ~/.cache/skqk (created on first write)."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().absolute()


def cache_file(root: Path, source: Path, signature: str) -> Path:
    """Where the decoded dataset of `source` with content `signature` is cached."""
    key = hashlib.sha256(f"{CACHE_FORMAT}:{signature}".encode()).hexdigest()[:16]
    return root / f"{source.name}-{key}.pt"


def write_cache(dataset: Dataset, path: Path) -> None:
    """Save `dataset` to `path`; a cache that cannot be written only costs a decode next time, so warn."""
    content = {
        "train_images": dataset.train.images,
        "train_labels": dataset.train.labels,
        "test_images": dataset.test.images,
        "test_labels": dataset.test.labels,
        "classes": dataset.train.classes,
        "mean": dataset.mean,
        "std": dataset.std,
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
    }
    try:
        with atomic_write(path) as file:
            torch.save(content, file)
    except (OSError, RuntimeError) as error:  # torch reports a failed file write (e.g. a full disk) as RuntimeError
        warnings.warn(f"could not write the data cache {path}: {error}", stacklevel=3)


def read_cache(path: Path) -> Dataset | None:
    """The dataset cached at `path`, or None if there is none or it is unreadable (then it gets rebuilt)."""
    if not path.exists():
        return None
    try:
        content = torch.load(path, weights_only=True)
        classes = content["classes"]
        return Dataset(
            ImageData(content["train_images"], content["train_labels"], classes),
            ImageData(content["test_images"], content["test_labels"], classes),
            content["mean"],
            content["std"],
            content["source"],
            content["fingerprint"],
        )
    except Exception as error:  # truncated, foreign or inconsistent files all just mean "decode again"
        reason = type(error).__name__
        warnings.warn(f"ignoring unreadable data cache {path} ({reason}); decoding again", stacklevel=3)
        return None
