"""Data arriving in chunks: which training samples each chunk brings and which test samples measure it.

Chunk k of a stream is the sample range ``[k * chunk_samples, (k + 1) * chunk_samples)`` of one seeded
permutation of the training split (`skqk.data.subset_indices`): in random order every chunk is an i.i.d. draw;
in class-incremental order (``class_chunks``) every chunk brings new classes. Chunk 0 is the pre-training data.
"""

from __future__ import annotations

import torch
from torch import Tensor

from skqk.data import DataError, subset_indices
from skqk.data.sampling import class_interleaved_permutation


def chunk_indices(
    labels: Tensor, chunk: int, chunk_samples: int, seed: int = 0, class_chunks: tuple[int, int] | None = None
) -> Tensor:
    """The training samples chunk `chunk` brings: sample range ``chunk * chunk_samples`` up to the next chunk."""
    stop = (chunk + 1) * chunk_samples
    return subset_indices(labels, stop, seed, class_chunks=class_chunks)[chunk * chunk_samples :]


def experience_eval_indices(
    test_labels: Tensor, chunk_classes: list[Tensor] | None, chunks: int, per_chunk: int, seed: int = 0
) -> list[Tensor]:
    """Test samples that measure each chunk's knowledge (one column of the accuracy matrix each).

    Args:
        test_labels: labels of the test split.
        chunk_classes: class-incremental order: the classes each chunk brought; every chunk is measured on up
            to `per_chunk` test samples of its classes, balanced between them. None: random order, where the
            chunks are i.i.d. and each is measured on its own disjoint, class-balanced held-out test sample.
        chunks: number of chunks.
        per_chunk: test samples per chunk.
        seed: which test samples.

    Returns:
        One int64 index tensor into the test split per chunk.
    """
    generator = torch.Generator().manual_seed(seed)
    if chunk_classes is None:
        if chunks * per_chunk > len(test_labels):
            raise DataError(f"{chunks} held-out samples of {per_chunk} need more than {len(test_labels)} test samples")
        return list(subset_indices(test_labels, chunks * per_chunk, seed, balanced=True).split(per_chunk))
    sets = []
    for classes in chunk_classes:
        members = torch.isin(test_labels, classes).nonzero().squeeze(1)
        sets.append(members[class_interleaved_permutation(test_labels[members], generator)[:per_chunk]])
    return sets
