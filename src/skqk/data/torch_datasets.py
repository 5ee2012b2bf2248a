"""`from_torch`: any pair of ``torch.utils.data.Dataset`` objects of (tensor, target) items as a skqk dataset.

Items are read once into memory, like every skqk dataset: 1-d float tensors become a table (standardised with the
train split's statistics), uint8 (C, H, W) tensors images; float (C, H, W) tensors in [0, 1] that are exactly k/255
(what torchvision's ``ToTensor`` gives for decoded images) become those uint8 images again. Targets are class
indices (int) or, with ``task="regression"``, values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from skqk.data.dataset import DataError, Dataset, ImageData, Split, TableData


def from_torch(
    train,
    test,
    task: str = "classification",
    classes: list[str] | None = None,
    source: str = "torch datasets",
) -> Dataset:
    """A dataset from a train and a test ``torch.utils.data.Dataset`` of ``(tensor, target)`` pairs.

    Args:
        train: the training samples (anything with ``len`` and ``[i]``).
        test: the test samples, of the same kind.
        task: "classification" (integer targets 0..C-1) or "regression" (numeric targets).
        classes: class names (default "0".."C-1"); not for regression.
        source: how reports name the data.

    Returns:
        The dataset; its fingerprint covers every sample, so run folders and stores refuse other data.

    Raises:
        DataError: empty or inconsistent items, or targets unfit for `task`.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> data = from_torch(TensorDataset(x_train, y_train), TensorDataset(x_test, y_test), task="regression")
    """
    if task not in ("classification", "regression"):
        raise DataError(f"task must be 'classification' or 'regression', got {task!r}")
    (x_train, y_train), (x_test, y_test) = (stacked(part, name) for part, name in ((train, "train"), (test, "test")))
    if task == "regression":
        if classes:
            raise DataError("regression targets have no classes")
        names: list[str] = []
        y_train, y_test = (y.to(torch.float32) for y in (y_train, y_test))
    else:
        if y_train.is_floating_point() and not torch.equal(y_train, y_train.round()):
            raise DataError("classification targets must be integers; for values, pass task='regression'")
        y_train, y_test = (y.to(torch.int64) for y in (y_train, y_test))
        count = int(max(y_train.max(), y_test.max())) + 1
        names = list(classes) if classes is not None else [str(i) for i in range(count)]
    splits = [split_of(x, y, names) for x, y in ((x_train, y_train), (x_test, y_test))]
    return Dataset.from_splits(*splits, source)


def stacked(dataset, name: str) -> tuple[Tensor, Tensor]:
    if len(dataset) == 0:
        raise DataError(f"the {name} dataset is empty")
    try:
        items = [dataset[i] for i in range(len(dataset))]
        return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor([float(y) for _, y in items])
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"the {name} dataset must hold (tensor, number) pairs of one shape: {error}") from None


def split_of(x: Tensor, y: Tensor, classes: list[str]) -> Split:
    if x.dim() == 2 and x.dtype != torch.uint8:
        return TableData(x.to(torch.float32).contiguous(), y, classes, [f"x{i}" for i in range(x.shape[1])])
    if x.dim() == 4 and x.is_floating_point():
        scaled = x * 255
        if x.min() >= 0 and x.max() <= 1 and torch.equal(scaled, scaled.round()):
            x = scaled.round().to(torch.uint8)
    if x.dim() == 4 and x.dtype == torch.uint8:
        return ImageData(x.contiguous(), y, classes)
    raise DataError(
        f"items must be 1-d feature tensors or (C, H, W) images (uint8, or floats k/255), got {x.dtype} "
        f"{list(x.shape[1:])}"
    )
