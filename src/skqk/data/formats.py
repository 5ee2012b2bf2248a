"""Decoding single files: image files of any format PIL reads, and the pickled CIFAR-10 python batches."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from skqk.data.dataset import DataError

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
CIFAR10_SIDE = 32
# Datasets recognised by `content_fingerprint`, to name them in reports: class names alone prove nothing.
# The JPEG q75 re-encoding is shared/data/cifar10-jpeg.tar.gz (archive sha256 a776ebc8...) or its contents.
KNOWN_DATASETS = {
    "749332fc3f89f47f1525bdd0da786edf30c5edc7b16ee86a2c018389c3d8f441": "CIFAR-10 (JPEG q75 re-encoding)",
}
# Every image is decoded and kept in memory, so a dataset of larger images could not be trained on anyway;
# checked from the file header, so a hostile file (a black 144-megapixel PNG is 140 kB) is refused before decoding.
MAX_IMAGE_PIXELS = 4096 * 4096


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Pixels of one image file: uint8 (H, W) if it is grayscale, else (H, W, 3) RGB (alpha dropped)."""
    try:
        with warnings.catch_warnings():  # PIL's bomb warning is for a limit above ours, checked just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only; pixels are decoded on convert()
        with image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{width}x{height} pixels is more than the {MAX_IMAGE_PIXELS} allowed")
            return np.asarray(image.convert("L" if image.mode in GRAY_MODES else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode image {name}: {error}") from None


def image_encoding(data: bytes) -> str:
    """How an image file is encoded, e.g. "PNG" or "JPEG q75": lossy re-encodings change accuracy."""
    with Image.open(io.BytesIO(data)) as image:
        quality = jpeg_quality(image) if image.format == "JPEG" else None
        return f"{image.format} q{quality}" if quality else str(image.format)


def jpeg_quality(image: Image.Image) -> int | None:
    """The libjpeg quality setting whose quantization tables `image` uses, or None for non-standard tables.

    Found by encoding a blank image at every quality: cheap (8x8 pixels) and exact for libjpeg's tables.
    """
    for quality in range(1, 101):
        encoded = io.BytesIO()
        Image.new(image.mode, (8, 8)).save(encoded, "JPEG", quality=quality)
        if Image.open(encoded).quantization == image.quantization:
            return quality
    return None


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler limited to the globals numpy arrays need, so a tampered batch file cannot run code."""

    ALLOWED_GLOBALS = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5, if a user re-pickled the batches
            ("numpy._core.numeric", "_frombuffer"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def unpickle(data: bytes, name: str) -> dict:
    """The dict stored in one CIFAR-10 python file, keys as bytes (the files were pickled by Python 2)."""
    try:
        content = ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as error:  # a corrupt pickle can fail in many ways; all mean the same to the user
        raise DataError(f"cannot read CIFAR-10 file {name}: {error}") from None
    if not isinstance(content, dict):
        raise DataError(f"cannot read CIFAR-10 file {name}: expected a dict, found {type(content).__name__}")
    return content


def cifar_batch(data: bytes, name: str) -> tuple[Tensor, Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of one `data_batch_*` or `test_batch` file."""
    content = unpickle(data, name)
    pixels, labels = np.asarray(content.get(b"data")), content.get(b"labels")
    row = 3 * CIFAR10_SIDE * CIFAR10_SIDE
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != row or labels is None:
        raise DataError(f"CIFAR-10 file {name} has no b'labels' or no b'data' of uint8 rows of {row} values")
    if len(labels) != len(pixels):
        raise DataError(f"CIFAR-10 file {name} has {len(pixels)} images but {len(labels)} labels")
    images = torch.from_numpy(pixels.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE).copy())  # may be read-only
    return images, torch.as_tensor(labels, dtype=torch.int64)


def cifar_label_names(data: bytes, name: str) -> list[str]:
    """Class names stored in a `batches.meta` file."""
    names = unpickle(data, name).get(b"label_names")
    if not names:
        raise DataError(f"CIFAR-10 file {name} has no b'label_names'")
    return [label.decode() if isinstance(label, bytes) else str(label) for label in names]
