"""Builders of tiny datasets on disk, in every layout `load_dataset` reads, with the tensors they must give.

Offered as factory fixtures, since test modules cannot import this one under --import-mode=importlib.
"""

import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog", "emu"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, C, H, W), in sorted (class, file name) order
    labels: np.ndarray  # int64 (N,)


def random_pixels(rng: np.random.Generator, channels: int, size: int) -> np.ndarray:
    shape = (size, size, 3) if channels == 3 else (size, size)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def as_chw(pixels: np.ndarray, channels: int) -> np.ndarray:
    """What the loader makes of one image: (C, H, W), grayscale repeated into every channel."""
    hwc = pixels if pixels.ndim == 3 else np.repeat(pixels[:, :, None], channels, axis=2)
    return hwc.transpose(2, 0, 1)


def write_image_tree(
    root: Path,
    channels: int = 3,
    size: int = 8,
    counts: dict[str, int] | None = None,
    gray_files: int = 0,
) -> dict[str, Split]:
    """Write `root/{train,test}/<class>/<i>.png` and return the expected splits.

    Args:
        channels: 3 for RGB files, 1 for grayscale ones.
        counts: images per class for each split.
        gray_files: how many of the first files of each class folder are grayscale while the rest are RGB.
    """
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (counts or {"train": 4, "test": 2}).items():
        images, labels = [], []
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = random_pixels(rng, 1 if i < gray_files else channels, size)
                Image.fromarray(pixels).save(folder / f"{i}.png")
                images.append(as_chw(pixels, channels))
                labels.append(label)
        splits[split] = Split(np.stack(images), np.array(labels, dtype=np.int64))
    return splits


def official_pickle(content: dict) -> bytes:
    """`content` pickled as in the official files: protocol 2, numpy arrays under their numpy 1 module name."""
    return pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_cifar_batches(folder: Path, per_batch: int = 4, test: int = 6) -> dict[str, Split]:
    """Write a miniature `cifar-10-batches-py` in the official format (dicts with bytes keys, rows of 3072
    uint8 values: 1024 red, 1024 green, 1024 blue) and return the expected splits."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    meta = {b"label_names": [name.encode() for name in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(official_pickle(meta))
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": test}
    rows = {}
    for name, count in batches.items():
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        content = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"] * count}
        (folder / name).write_bytes(official_pickle(content))
        rows[name] = Split(data.reshape(-1, 3, 32, 32), np.array(labels, dtype=np.int64))
    train = [rows[f"data_batch_{i}"] for i in range(1, 6)]
    return {
        "train": Split(np.concatenate([s.images for s in train]), np.concatenate([s.labels for s in train])),
        "test": rows["test_batch"],
    }


def make_tar(folder: Path, archive: Path, arcname: str = ".") -> Path:
    """Archive the contents of `folder` under `arcname` inside the archive; compression from the suffix."""
    mode = "w:gz" if archive.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname)
    return archive


@pytest.fixture
def image_tree():
    return write_image_tree


@pytest.fixture
def cifar_batches():
    return write_cifar_batches


@pytest.fixture
def tar_of():
    return make_tar


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
