"""Deterministic subsets, epoch orders and batches, so compared training methods see identical data."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch import Tensor

from skqk.data.dataset import DataError, Dataset, Split


def subset_indices(
    labels: Tensor,
    n: int,
    seed: int = 0,
    balanced: bool = False,
    class_chunks: tuple[int, int] | None = None,
    ordered: bool = False,
) -> Tensor:
    """The first `n` samples of one seeded permutation of a split: subsets of one seed are nested.

    Args:
        labels: int64 (N,) labels of the split.
        n: subset size, 1 <= n <= N.
        seed: selects the permutation; the same seed gives the same order for every `n`.
        balanced: interleave the classes round-robin, so every prefix is as class-balanced as possible.
        class_chunks: ``(classes_per_chunk, chunk_samples)`` for the class-incremental order
            (`class_incremental_permutation`): data arriving in chunks that each bring new classes.
        ordered: the split is in time order (`TableData.ordered`): the first `n` samples in time, whatever the
            seed, so chunks of a stream follow time.

    Returns:
        int64 (n,) sample indices into the split.

    Raises:
        DataError: `n` is out of range, a chunk's classes have fewer than `chunk_samples` samples, or an order
            that counts classes is asked of regression targets or of time-ordered samples.
    """
    if not 0 < n <= len(labels):
        raise DataError(f"cannot take a subset of {n} samples: the split has {len(labels)}")
    check_order(labels, balanced, class_chunks, ordered)
    if ordered:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    if class_chunks is not None:
        return class_incremental_permutation(labels, *class_chunks, generator)[:n]
    if balanced:
        return class_interleaved_permutation(labels, generator)[:n]
    return torch.randperm(len(labels), generator=generator)[:n]


def check_order(labels: Tensor, balanced: bool, class_chunks: tuple[int, int] | None, ordered: bool) -> None:
    """Class-balanced and class-incremental orders count classes: regression targets have none, and time-ordered
    samples keep their time order."""
    wanted = "class-balanced subsets" if balanced else "the class-incremental order" if class_chunks else None
    if wanted and labels.is_floating_point():
        raise DataError(f"{wanted} count classes; regression targets have none (drop --balanced/--class-incremental)")
    if wanted and ordered:
        raise DataError(f"{wanted} would reorder time-ordered samples; drop --balanced/--class-incremental or --time")


def class_incremental_permutation(
    labels: Tensor, classes_per_chunk: int, chunk_samples: int, generator: torch.Generator
) -> Tensor:
    """A permutation whose consecutive blocks of `chunk_samples` each bring `classes_per_chunk` new classes.

    The classes are taken in a seeded order and grouped; block k holds samples of group k only, balanced between
    its classes. Whatever is left once every group has had its block follows, class-interleaved. So chunk k of
    a stream, ``[k * chunk_samples, (k + 1) * chunk_samples)``, is the class-incremental setting's k-th experience.
    """
    if classes_per_chunk <= 0 or chunk_samples <= 0:
        raise DataError(
            f"class-incremental chunks need positive sizes, got {classes_per_chunk} classes, {chunk_samples} samples"
        )
    classes = labels.unique()
    if classes_per_chunk > len(classes):
        raise DataError(f"class-incremental chunks of {classes_per_chunk} new classes: the data has {len(classes)}")
    classes = classes[torch.randperm(len(classes), generator=generator)]
    blocks, used = [], torch.zeros(len(labels), dtype=torch.bool)
    for group in classes.split(classes_per_chunk):
        members = torch.isin(labels, group).nonzero().squeeze(1)
        if len(members) < chunk_samples:
            raise DataError(
                f"classes {group.tolist()} have {len(members)} samples, fewer than a chunk of {chunk_samples}"
            )
        block = members[class_interleaved_permutation(labels[members], generator)[:chunk_samples]]
        blocks.append(block)
        used[block] = True
    rest = (~used).nonzero().squeeze(1)
    blocks.append(rest[class_interleaved_permutation(labels[rest], generator)])
    return torch.cat(blocks)


def replay_indices(labels: Tensor, earlier: Tensor, k: int, seed: int = 0) -> Tensor:
    """A replay buffer: `k` of the `earlier` samples, class-balanced and fixed by (`seed`, the earlier samples).

    Incremental re-training on a new chunk may revisit a few old samples to limit forgetting (experience replay,
    Rolnick et al. 2019); drawing them round-robin over the classes keeps every old class represented. Regression
    targets have no classes: their buffer is a uniform draw.

    Args:
        labels: int64 (N,) labels of the split.
        earlier: indices of the samples seen before the new chunk.
        k: buffer size, 0 <= k <= len(earlier).
        seed: selects which samples; the same (seed, earlier) gives the same buffer.

    Returns:
        int64 (k,) sample indices, a subset of `earlier`.
    """
    earlier = torch.as_tensor(earlier, dtype=torch.int64)
    if not 0 <= k <= len(earlier):
        raise DataError(f"cannot replay {k} samples: only {len(earlier)} came before the new ones")
    if k == 0:
        return earlier[:0]
    generator = torch.Generator().manual_seed(mixed_seed(seed, -len(earlier)))  # never an epoch's seed
    if labels.is_floating_point():
        return earlier[torch.randperm(len(earlier), generator=generator)[:k]]
    return earlier[class_interleaved_permutation(labels[earlier], generator)[:k]]


def subset_fingerprint(
    labels: Tensor,
    seed: int = 0,
    balanced: bool = False,
    class_chunks: tuple[int, int] | None = None,
    ordered: bool = False,
) -> str:
    """sha256 of the permutation whose prefixes are the subsets of (`seed`, `balanced`, `class_chunks`): names
    every subset `subset_indices` draws with them, whatever its size.

    Records made for nested subsets (a pattern store grown from n to n + m samples) must be continued with the
    same permutation: another seed or `balanced` choice selects other samples, which the dataset fingerprint
    alone cannot see.
    """
    order = subset_indices(labels, len(labels), seed, balanced, class_chunks, ordered)
    return hashlib.sha256(order.numpy()).hexdigest()


def class_interleaved_permutation(labels: Tensor, generator: torch.Generator) -> Tensor:
    """A permutation taking one sample per class in turn (classes in a seeded order, each class's samples
    in a seeded order), continuing with the classes that still have samples once smaller ones run out."""
    classes = labels.unique()
    keys = torch.empty(len(labels), dtype=torch.int64)
    for turn, label in enumerate(classes[torch.randperm(len(classes), generator=generator)]):
        members = (labels == label).nonzero().squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        keys[members] = torch.arange(len(members)) * len(classes) + turn
    return torch.argsort(keys)


def epoch_order(indices: Tensor, seed: int, epoch: int) -> Tensor:
    """The order in which `indices` are visited in `epoch`: a permutation fixed by (seed, epoch) alone.

    Args:
        indices: the sample indices trained on, e.g. from `subset_indices`.
        seed: the run's data-order seed.
        epoch: the epoch number; resuming at an epoch reproduces its order.

    Returns:
        `indices`, permuted.
    """
    generator = torch.Generator().manual_seed(mixed_seed(seed, epoch))
    return indices[torch.randperm(len(indices), generator=generator)]


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (e.g. seed and epoch, or seed, epoch and rank), so that nearby tuples such as
    (0, 1) and (1, 0) are unrelated."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def batches(data: Split, dataset: Dataset, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Consecutive batches of `indices`, in their order, the last one possibly smaller.

    Args:
        data: the split to draw from (`dataset.train` or `dataset.test`).
        dataset: supplies the normalization.
        indices: int64 sample indices into `data`, in visiting order (e.g. from `epoch_order`).
        batch_size: samples per batch, > 0.

    Yields:
        (x, y, idx): float32 normalized images (B, C, H, W) or features (B, F), the targets (B,) (int64 labels, or
        standardised float32 values for regression: `Dataset.targets`) and the int64 indices (B,) of the samples
        in `data`, so per-sample records (e.g. activation patterns) can be looked up.
    """
    for idx in batch_indices(indices, batch_size):
        yield dataset.inputs(data, idx), dataset.targets(data, idx), idx


def batch_indices(indices: Tensor, batch_size: int) -> tuple[Tensor, ...]:
    """`indices` cut into consecutive batches of `batch_size`, the last one possibly smaller; none for none."""
    if batch_size <= 0:
        raise DataError(f"batch size must be positive, got {batch_size}")
    indices = torch.as_tensor(indices, dtype=torch.int64)
    return indices.split(batch_size) if len(indices) else ()  # split() of nothing yields one empty piece
