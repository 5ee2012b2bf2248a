"""In-memory datasets: uint8 images plus the train split's channel statistics used to normalize them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from skqk._errors import one_line


class DataError(ValueError):
    """A problem with the user's data or its location; the message is always one line, fit for a CLI."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


@dataclass
class ImageData:
    """One split, fully in memory: all of CIFAR-10 is 180 MB of uint8, so nothing needs to be lazy.

    Attributes:
        images: uint8 (N, C, H, W).
        labels: int64 (N,), indices into `classes`.
        classes: class names; label `i` is `classes[i]`.
    """

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {list(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"labels must be int64 ({len(self.images)},), got {self.labels.dtype} {list(self.labels.shape)}"
            )
        if len(self.labels) and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise DataError(f"labels must lie in [0, {len(self.classes)}), one per class name")

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    """A train and a test split of the same classes and image shape, with the train split's statistics.

    Attributes:
        train: the training split.
        test: the test split.
        mean: float32 (C,), per-channel mean of the train split in [0, 1] pixel units.
        std: float32 (C,), per-channel standard deviation of the train split in [0, 1] pixel units.
        source: where the data came from, for reports.
        fingerprint: `content_fingerprint` of the splits; computed when not given (the data cache stores it).
    """

    train: ImageData
    test: ImageData
    mean: Tensor
    std: Tensor
    source: str
    fingerprint: str = ""

    def __post_init__(self):
        if self.train.classes != self.test.classes:
            raise DataError(f"train and test classes differ: {self.train.classes} vs {self.test.classes}")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            shapes = [list(split.images.shape[1:]) for split in (self.train, self.test)]
            raise DataError(f"train and test images differ in shape (C, H, W): {shapes[0]} vs {shapes[1]}")
        channels = (self.in_channels,)
        if self.mean.shape != channels or self.std.shape != channels:
            raise DataError(f"mean and std must have shape {channels}, one value per channel")
        if not self.fingerprint:
            self.fingerprint = content_fingerprint(self.train, self.test)

    @classmethod
    def from_splits(cls, train: ImageData, test: ImageData, source: str, fingerprint: str = "") -> Dataset:
        """Build a dataset whose normalization statistics come from `train`."""
        mean, std = channel_stats(train.images)
        return cls(train, test, mean, std, source, fingerprint)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def normalize(self, images_uint8: Tensor) -> Tensor:
        """Map uint8 images (a batch or one image, any device) to float32 `(x / 255 - mean) / std`."""
        scaled = images_uint8.to(torch.float32) / 255
        mean = self.mean.to(scaled.device).view(-1, 1, 1)
        std = self.std.to(scaled.device).view(-1, 1, 1)
        return scaled.sub_(mean).div_(std)


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean and std in [0, 1] units of uint8 (N, C, H, W) images.

    Computed from each channel's 256-bin value histogram, so no float copy of the whole split is made.

    Args:
        images: uint8 (N, C, H, W), N > 0.

    Returns:
        (mean, std), each float32 (C,); std is the population standard deviation (1 for a constant channel).
    """
    counts = torch.stack([torch.bincount(channel.flatten(), minlength=256) for channel in images.unbind(1)])
    probabilities = counts.double() / counts.sum(dim=1, keepdim=True)
    values = torch.arange(256, dtype=torch.float64)
    mean = probabilities @ values
    variance = (probabilities @ values.square() - mean.square()).clamp_min(0)
    std = variance.sqrt() / 255
    std = torch.where(std > 0, std, 1.0)  # a constant channel normalises to 0, not to inf/NaN
    return (mean / 255).float(), std.float()


def content_fingerprint(train: ImageData, test: ImageData) -> str:
    """sha256 of the class names and of both splits' pixels and labels, in sample order.

    Pattern stores and run folders are keyed by sample position, so they must name the exact data they were
    made from: a different or re-ordered dataset of the same size would otherwise attach patterns and labels
    to the wrong images. Hashing the decoded arrays (not file names or dates) also recognises known data
    wherever it is unpacked; it costs about a second for CIFAR-10 and is cached with the decoded data.
    """
    digest = hashlib.sha256("\n".join(train.classes).encode())
    for split in (train, test):
        digest.update(f"|{list(split.images.shape)}|".encode())
        digest.update(split.images.contiguous().numpy())
        digest.update(split.labels.contiguous().numpy())
    return digest.hexdigest()
