"""In-memory datasets: uint8 images or tables of features, plus the train split's statistics used to normalize them.

Classification or regression: a split's `labels` are int64 class indices into `classes`, or float32 target values
when `classes` is empty (then `Dataset.task` is "regression" and the network has one output).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

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
        check_labels(self.labels, len(self.images), self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def samples(self) -> Tensor:
        return self.images

    @property
    def ordered(self) -> bool:
        """Images come in no time order: subsets are prefixes of a seeded permutation."""
        return False


@dataclass
class TableData:
    """One split of a table, fully in memory (`skqk.data.tables` reads CSV, Parquet and .npz files into it).

    Attributes:
        features: float32 (N, F): numeric columns as read, categorical ones one-hot; `Dataset.normalize`
            standardises them with the train split's statistics.
        labels: int64 (N,) indices into `classes`, or float32 (N,) target values for regression (`classes` empty).
        classes: class names; empty for regression.
        feature_names: one per feature column, ``column=value`` for a one-hot column (part of the fingerprint).
        ordered: the samples are in time order: subsets are then prefixes of that order, not of a permutation.
    """

    features: Tensor
    labels: Tensor
    classes: list[str]
    feature_names: list[str]
    ordered: bool = False

    def __post_init__(self):
        if self.features.dtype != torch.float32 or self.features.dim() != 2:
            raise DataError(f"features must be float32 (N, F), got {self.features.dtype} {list(self.features.shape)}")
        if len(self.feature_names) != self.features.shape[1]:
            raise DataError(f"{len(self.feature_names)} feature names for {self.features.shape[1]} feature columns")
        check_labels(self.labels, len(self.features), self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def samples(self) -> Tensor:
        return self.features


def check_labels(labels: Tensor, n: int, classes: list[str]) -> None:
    """Class indices into `classes`, or float32 regression targets when there are no classes."""
    dtype = torch.int64 if classes else torch.float32  # no classes: regression targets
    if labels.dtype != dtype or labels.shape != (n,):
        kind = "labels" if classes else "regression targets"
        raise DataError(f"{kind} must be {str(dtype)[6:]} ({n},), got {labels.dtype} {list(labels.shape)}")
    if not classes:
        if not torch.isfinite(labels).all():
            raise DataError("regression targets must be finite")
        return
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
        raise DataError(f"labels must lie in [0, {len(classes)}), one per class name")


Split = ImageData | TableData


@dataclass
class Dataset:
    """A train and a test split of the same classes and sample shape, with the train split's statistics.

    Attributes:
        train: the training split.
        test: the test split.
        mean: float32 (C,), per-channel mean of the train split in [0, 1] pixel units; for a table (F,), per
            feature (0 for a one-hot column, which is kept as it is).
        std: float32, the matching standard deviations (1 for a one-hot or constant column).
        source: where the data came from, for reports.
        fingerprint: `content_fingerprint` of the splits; computed when not given (the data cache stores it).
        table: how a table was read (target, features, task, split: `skqk.data.tables.TableSpec`), else empty.
        target_mean, target_std: regression targets are standardised by these (train split) for training, and
            metrics are reported in the targets' own units.
    """

    train: Split
    test: Split
    mean: Tensor
    std: Tensor
    source: str
    fingerprint: str = ""
    table: dict = field(default_factory=dict)
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self):
        if type(self.train) is not type(self.test):
            raise DataError("train and test splits must both be images or both be tables")
        if self.train.classes != self.test.classes:
            raise DataError(f"train and test classes differ: {self.train.classes} vs {self.test.classes}")
        if self.train.samples.shape[1:] != self.test.samples.shape[1:]:
            shapes = [list(split.samples.shape[1:]) for split in (self.train, self.test)]
            raise DataError(f"train and test samples differ in shape: {shapes[0]} vs {shapes[1]}")
        if isinstance(self.train, TableData) and self.train.feature_names != self.test.feature_names:
            raise DataError("train and test tables have different feature columns")
        shape = (self.train.samples.shape[1],)
        if self.mean.shape != shape or self.std.shape != shape:
            raise DataError(f"mean and std must have shape {shape}, one value per channel or feature")
        if not self.fingerprint:
            self.fingerprint = content_fingerprint(self.train, self.test, self.table)

    @classmethod
    def from_splits(cls, train: Split, test: Split, source: str, fingerprint: str = "", table: dict | None = None):
        """Build a dataset whose normalization statistics come from `train`."""
        if isinstance(train, TableData):
            mean, std = feature_stats(train)
        else:
            mean, std = channel_stats(train.images)
        target_mean, target_std = 0.0, 1.0
        if not train.classes:
            target_mean, target_std = train.labels.double().mean().item(), train.labels.double().std().item()
            target_std = target_std if target_std > 0 and len(train) > 1 else 1.0
        return cls(train, test, mean, std, source, fingerprint, table or {}, target_mean, target_std)

    @property
    def task(self) -> str:
        """ "classification", or "regression" when the targets are values rather than classes."""
        return "classification" if self.train.classes else "regression"

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]

    @property
    def in_features(self) -> int:
        return self.train.features.shape[1]

    @property
    def num_classes(self) -> int:
        """The network's outputs: one per class, or one value for regression."""
        return len(self.train.classes) or 1

    def normalize(self, samples: Tensor) -> Tensor:
        """Map uint8 images (a batch or one image, any device) to float32 `(x / 255 - mean) / std`, or a table's
        features (a batch) to `(x - mean) / std`."""
        if isinstance(self.train, TableData):
            return (samples - self.mean.to(samples.device)) / self.std.to(samples.device)
        scaled = samples.to(torch.float32) / 255
        mean = self.mean.to(scaled.device).view(-1, 1, 1)
        std = self.std.to(scaled.device).view(-1, 1, 1)
        return scaled.sub_(mean).div_(std)

    def inputs(self, split: Split, indices: Tensor) -> Tensor:
        """The network's inputs for samples `indices` of `split`: normalized images or standardised features."""
        return self.normalize(split.samples[indices])

    def targets(self, split: Split, indices: Tensor) -> Tensor:
        """What the loss compares outputs with: class indices, or regression targets standardised."""
        labels = split.labels[indices]
        return labels if split.classes else (labels - self.target_mean) / self.target_std


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


def feature_stats(train: TableData) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std of the train split; one-hot columns (``column=value``) keep 0 and 1, and a constant
    column gets std 1 (it normalises to 0, not to inf/NaN)."""
    features = train.features.double()
    mean, std = features.mean(0), features.std(0, unbiased=False)
    one_hot = torch.tensor(["=" in name for name in train.feature_names], dtype=torch.bool)
    mean = torch.where(one_hot, 0.0, mean)
    std = torch.where(one_hot | (std <= 0), 1.0, std)
    return mean.float(), std.float()


def content_fingerprint(train: Split, test: Split, table: dict | None = None) -> str:
    """sha256 of the class names and of both splits' samples and labels, in sample order (for a table also its
    feature names, with the one-hot mapping, and how it was read).

    Pattern stores and run folders are keyed by sample position, so they must name the exact data they were
    made from: a different or re-ordered dataset of the same size would otherwise attach patterns and labels
    to the wrong images. Hashing the decoded arrays (not file names or dates) also recognises known data
    wherever it is unpacked; it costs about a second for CIFAR-10 and is cached with the decoded data.
    """
    digest = hashlib.sha256("\n".join(train.classes).encode())
    if isinstance(train, TableData):
        digest.update(json.dumps([train.feature_names, train.ordered, table or {}], sort_keys=True).encode())
    for split in (train, test):
        digest.update(f"|{list(split.samples.shape)}|".encode())
        digest.update(split.samples.contiguous().numpy())
        digest.update(split.labels.contiguous().numpy())
    return digest.hexdigest()
