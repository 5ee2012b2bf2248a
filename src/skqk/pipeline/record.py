"""Phase 3: activation pattern acquisition — the selector's patterns of all n + m samples, into a store.

One inference pass without gradients, in large batches. Samples the store already holds are skipped, so when
m new samples arrive only their patterns are computed and appended; the old ones are never rewritten.
"""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from skqk.data import Dataset, batches, subset_indices
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import load_model_checkpoint, load_selector, model_kwargs, resolve_pooling
from skqk.selector import PathSelector
from skqk.store import PatternStore


def selector_from_checkpoint(
    checkpoint: str | os.PathLike, pooling: str | None = None, fits: dict | None = None
) -> PathSelector:
    """The path selector of a checkpoint: its network's SK (a QK checkpoint's unchanged selector), with the
    pooling of `resolve_pooling` (a QK checkpoint's own; else `pooling`, live by default)."""
    ckpt = load_model_checkpoint(checkpoint, fits)
    return load_selector(ckpt, resolve_pooling(ckpt, pooling, path=str(checkpoint)), str(checkpoint))


def record(
    selector: PathSelector,
    dataset: Dataset,
    indices: torch.Tensor,
    store: str | os.PathLike,
    batch_size: int = 1024,
    progress: bool = True,
) -> PatternStore:
    """Record the patterns of training samples `indices` into `store` (created if absent) in one atomic commit.

    Under torch.distributed (`skqk.pipeline.distributed`) every rank calls it: rank 0 creates or tidies the store, each
    rank writes the patterns of its share of the missing samples into chunk files of its own, and rank 0
    commits all of them at once, so the store holds what one process would have recorded.

    Example:
        >>> selector = selector_from_checkpoint("runs/a/model.pt")
        >>> record(selector, dataset, subset_indices(dataset.train.labels, 4096), "runs/patterns")
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ctx = distributed.current()
    device = ctx.device
    if device.type != "cpu":
        selector.to(device)
    if ctx.is_distributed:  # rank 0 creates or checks and tidies the store before any rank writes to it

        def prepare() -> None:
            open_store(selector, dataset, indices, store)

        ctx.on_main(prepare)
        opened = PatternStore.open(store, selector, verify=False)  # rank 0 has just verified it
    else:
        opened = open_store(selector, dataset, indices, store)
    todo = ctx.share(indices[~torch.isin(indices, opened.indices)])
    chunks = [
        opened.write_chunk(idx, selector(x.to(device)))
        for x, _, idx in tqdm(
            batches(dataset.train, dataset, todo, batch_size),
            desc="record patterns",
            total=-(-len(todo) // batch_size),
            disable=not progress or not ctx.is_main,
            unit="batch",
        )
    ]
    if ctx.is_distributed:  # rank 0 adopts every rank's chunks in one commit, then the other ranks see them
        chunks = [chunk for rank_chunks in ctx.gather(chunks) for chunk in rank_chunks]
        ctx.on_main(lambda: opened.commit(chunks) if chunks else None)
        return opened if ctx.is_main else PatternStore.open(store, selector, verify=False)
    if chunks:
        opened.commit(chunks)
    return opened


def open_store(selector: PathSelector, dataset: Dataset, indices: torch.Tensor, store) -> PatternStore:
    """The store at `store`, checked against `selector` and rid of the files of killed recordings; or a new
    one for `selector`'s patterns (of the shape of sample ``indices[0]``'s) if there is none."""
    if os.path.exists(store):
        opened = PatternStore.open(store, selector)
        opened.remove_strays()  # chunks of an earlier recording killed before its commit
        return opened
    device = next(selector.parameters(), torch.empty(0)).device
    example = selector(dataset.normalize(dataset.train.images[indices[:1]]).to(device))
    return PatternStore.create(store, selector, example)


def record_from_checkpoint(
    checkpoint,
    dataset: Dataset,
    samples: int,
    store,
    pooling: str | None = None,
    subset_seed: int = 0,
    balanced: bool = False,
    batch_size: int = 1024,
    progress: bool = True,
    class_chunks: tuple[int, int] | None = None,
) -> PatternStore:
    """`record` for the first `samples` samples of the run's nested subset (what `skqk record` runs); the store
    gets only those it lacks, so recording n + m after n appends the m new samples' patterns."""
    selector = selector_from_checkpoint(checkpoint, pooling, fits=model_kwargs(dataset))
    indices = subset_indices(dataset.train.labels, samples, subset_seed, balanced, class_chunks)
    return record(selector, dataset, indices, store, batch_size, progress)
