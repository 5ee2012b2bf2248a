"""Phase 3: activation pattern acquisition — the selector's patterns of all n + m samples, into a store.

One inference pass without gradients, in large batches. Samples the store already holds are skipped, so when
m new samples arrive only their patterns are computed and appended; the old ones are never rewritten. The pass
commits every few batches, so a recording killed midway keeps what it did: running it again records the rest.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Collection
from pathlib import Path

import torch
from tqdm.auto import tqdm

from skqk.data import Dataset, batches, subset_fingerprint, subset_indices
from skqk.pipeline import distributed
from skqk.pipeline.checkpoint import load_model_checkpoint, load_selector, model_kwargs, resolve_pooling
from skqk.pipeline.loop import PROGRESS_LABEL
from skqk.selector import PathSelector
from skqk.store import PatternStore
from skqk.store.sizing import size_notice


def selector_from_checkpoint(
    checkpoint: str | os.PathLike,
    pooling: str | None = None,
    fits: dict | None = None,
    trust: Collection[str] = (),
) -> PathSelector:
    """The path selector of a checkpoint: its network's SK (a QK checkpoint's unchanged selector), with the
    pooling of `resolve_pooling` (a QK checkpoint's own; else `pooling`, live by default). A model named by
    import path is built only if `trust` names it (`skqk.models.resolve`)."""
    ckpt = load_model_checkpoint(checkpoint, fits)
    return load_selector(ckpt, resolve_pooling(ckpt, pooling, path=str(checkpoint)), str(checkpoint), trust)


COMMIT_EVERY = 8  # batches per process between commits: what a kill can lose, against one manifest write each


def record(
    selector: PathSelector,
    dataset: Dataset,
    indices: torch.Tensor,
    store: str | os.PathLike,
    batch_size: int = 1024,
    progress: bool = True,
    subset: str | None = None,
    wait: bool = True,
    commit_every: int = COMMIT_EVERY,
) -> PatternStore:
    """Record the patterns of training samples `indices` into `store` (created if absent), committing every
    `commit_every` batches, while holding the store's writer lock (other writers wait; with `wait` False,
    fail at once if one is writing). The store records `dataset`'s fingerprint and `subset` (the
    `subset_fingerprint` the indices come from), and refuses to be continued with others.

    Under torch.distributed (`skqk.pipeline.distributed`) every rank calls it: rank 0 locks, creates or tidies the
    store, each rank writes the patterns of its share of each round of missing samples into chunk files of its
    own, and rank 0 commits every round's chunks at once, so the store holds what one process would have recorded.

    Example:
        >>> selector = selector_from_checkpoint("runs/a/model.pt")
        >>> record(selector, dataset, subset_indices(dataset.train.labels, 4096), "runs/patterns")
    """
    for name, value in (("batch_size", batch_size), ("commit_every", commit_every)):
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")
    ctx = distributed.current()
    device = ctx.device
    if device.type != "cpu":
        selector.to(device)
    with contextlib.ExitStack() as lock:
        if ctx.is_main:
            Path(store).mkdir(parents=True, exist_ok=True)
            lock.enter_context(PatternStore.lock(store, wait))
        prepared = {}  # rank 0 creates or checks and tidies the store before any rank writes to it
        ctx.on_main(lambda: prepared.update(store=open_store(selector, dataset, indices, store, subset)))
        opened = prepared["store"] if ctx.is_main else PatternStore.open(store, selector, verify=False)
        todo = indices[~torch.isin(indices, opened.indices)]
        if progress and ctx.is_main:  # before the work: the user can still stop and choose patterns on the fly
            print(size_notice(opened.bytes_per_sample, len(opened) + len(todo), store), file=sys.stderr)
        rounds = todo.split(commit_every * batch_size * ctx.world_size) if len(todo) else ()
        bar = tqdm(
            desc=" ".join(filter(None, ["record patterns", PROGRESS_LABEL.get()])),
            total=sum(-(-len(ctx.share(part)) // batch_size) for part in rounds),
            disable=not progress or not ctx.is_main,
            unit="batch",
        )
        for part in rounds:  # the same rounds on every rank
            chunks = []
            for x, _, idx in batches(dataset.train, dataset, ctx.share(part), batch_size):
                chunks.append(opened.write_chunk(idx, selector(x.to(device))))
                bar.update()
            commit_round(ctx, opened, chunks)
        bar.close()
    return opened if ctx.is_main else PatternStore.open(store, selector, verify=False)


def commit_round(ctx: distributed.Context, opened: PatternStore, chunks: list) -> None:
    """Commit one round's chunks: rank 0 adopts every rank's at once (every rank must call it)."""
    if ctx.is_distributed:
        chunks = [chunk for rank_chunks in ctx.gather(chunks) for chunk in rank_chunks]
        ctx.on_main(lambda: opened.commit(chunks) if chunks else None)
    elif chunks:
        opened.commit(chunks)


def open_store(
    selector: PathSelector, dataset: Dataset, indices: torch.Tensor, store, subset: str | None = None
) -> PatternStore:
    """The store at `store`, checked against `selector`, the data and `subset` and rid of the files of killed
    recordings; or a new one for `selector`'s patterns (of the shape of sample ``indices[0]``'s) if there is
    none (also in an empty folder, or one a creation was killed in)."""
    if PatternStore.exists(store):
        opened = PatternStore.open(store, selector, data=dataset.fingerprint, subset=subset)
        opened.remove_strays()  # chunks of an earlier recording killed before its commit
        return opened
    device = next(selector.parameters(), torch.empty(0)).device
    example = selector(dataset.inputs(dataset.train, indices[:1]).to(device))
    return PatternStore.create(store, selector, example, data=dataset.fingerprint, subset=subset)


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
    wait: bool = True,
    class_chunks: tuple[int, int] | None = None,
    trust: Collection[str] = (),
) -> PatternStore:
    """`record` for the first `samples` samples of the run's nested subset (what `skqk record` runs); the store
    gets only those it lacks, so recording n + m after n appends the m new samples' patterns."""
    selector = selector_from_checkpoint(checkpoint, pooling, fits=model_kwargs(dataset), trust=trust)
    ordered = dataset.train.ordered
    indices = subset_indices(dataset.train.labels, samples, subset_seed, balanced, class_chunks, ordered)
    subset = subset_fingerprint(dataset.train.labels, subset_seed, balanced, class_chunks, ordered)
    return record(selector, dataset, indices, store, batch_size, progress, subset, wait)
