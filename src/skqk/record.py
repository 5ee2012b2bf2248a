"""Phase 3: activation pattern acquisition — the selector's patterns of all n + m samples, into a store.

One inference pass without gradients, in large batches. Samples the store already holds are skipped, so when
m new samples arrive only their patterns are computed and appended; the old ones are never rewritten.
"""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from skqk.checkpoint import CheckpointError, build_network, load_checkpoint
from skqk.data import Dataset, batches, subset_indices
from skqk.selector import PathSelector, build_selector
from skqk.store import PatternStore


def selector_from_checkpoint(checkpoint: str | os.PathLike, pooling: str = "live") -> PathSelector:
    """The path selector of a checkpoint: its network's SK (a QK checkpoint's unchanged selector)."""
    ckpt = load_checkpoint(checkpoint)
    if ckpt["kind"] == "decoupled":
        return build_selector(build_network(ckpt, "selector_state", str(checkpoint)).eval(), ckpt["pooling"])
    return build_selector(build_network(ckpt, path=str(checkpoint)).eval(), pooling)


def record(
    selector: PathSelector,
    dataset: Dataset,
    indices: torch.Tensor,
    store: str | os.PathLike,
    batch_size: int = 1024,
    progress: bool = True,
) -> PatternStore:
    """Record the patterns of training samples `indices` into `store` (created if absent) in one atomic commit.

    Example:
        >>> selector = selector_from_checkpoint("runs/a/model.pt")
        >>> record(selector, dataset, subset_indices(dataset.train.labels, 4096), "runs/patterns")
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if os.path.exists(store):
        opened = PatternStore.open(store, selector)
        opened.remove_strays()  # chunks of an earlier recording killed before its commit
        todo = indices[~torch.isin(indices, opened.indices)]
    else:
        example = selector(dataset.normalize(dataset.train.images[indices[:1]]))
        opened, todo = PatternStore.create(store, selector, example), indices
    chunks = [
        opened.write_chunk(idx, selector(x))
        for x, _, idx in tqdm(
            batches(dataset.train, dataset, todo, batch_size),
            desc="record patterns",
            total=-(-len(todo) // batch_size),
            disable=not progress,
            unit="batch",
        )
    ]
    if chunks:
        opened.commit(chunks)
    return opened


def record_from_checkpoint(
    checkpoint,
    dataset: Dataset,
    samples: int,
    store,
    pooling: str = "live",
    subset_seed: int = 0,
    balanced: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
) -> PatternStore:
    """`record` for the first `samples` samples of the run's nested subset (what `skqk record` runs)."""
    selector = selector_from_checkpoint(checkpoint, pooling)
    if load_checkpoint(checkpoint)["model_kwargs"]["in_channels"] != dataset.in_channels:
        raise CheckpointError(f"{checkpoint} was trained on images with another number of channels")
    indices = subset_indices(dataset.train.labels, samples, subset_seed, balanced)
    return record(selector, dataset, indices, store, batch_size, progress)
