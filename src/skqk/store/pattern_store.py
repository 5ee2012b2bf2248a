"""`PatternStore`: the index of the recorded patterns (sample -> record) and their reads and appends.

The on-disk format and its durability are in `skqk.store.format`, the summary for ``skqk patterns info`` in
`skqk.store.info`.
"""

from __future__ import annotations

import os
import uuid
import warnings
import zlib
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from skqk.atomic import fsync_dir
from skqk.gates import PoolWindow
from skqk.patterns import Pattern
from skqk.store.format import (
    CHUNK_PREFIX,
    INDEX_DTYPE,
    INDICES_SUFFIX,
    MANIFEST,
    RECORDS_SUFFIX,
    ChunkInfo,
    Manifest,
    SiteSpec,
    StoreError,
    as_indices,
    check_size,
    crash_point,
    decode,
    encode,
    file_crc32,
    is_leftover,
    read_chunk_indices,
    read_manifest,
    site_specs,
    store_lock,
    write_durably,
    write_manifest,
)
from skqk.store.info import store_info

if TYPE_CHECKING:
    from skqk.selector import PathSelector


class PatternStore:
    """The activation patterns of a training set, recorded by one path selector, with random access by sample.

    Use `create` or `open`, never the constructor. Reads return CPU tensors; sample indices are int64
    positions in the training split.

    Example:
        >>> store = PatternStore.create("run/patterns", selector, selector(x[:1]))
        >>> for idx, xb in loader:
        ...     store.append(idx, selector(xb))
        >>> store = PatternStore.open("run/patterns", selector)
        >>> pattern = store.read(torch.tensor([17, 3, 42]))
    """

    def __init__(self, path: Path, manifest: Manifest, windows: Mapping[str, PoolWindow] | None = None):
        """Start empty, then adopt the manifest's chunks: reads their index files, refuses duplicates.
        `windows`: the selector's pooling windows, against which a version 1 store's switches are checked."""
        self.path = path
        self._manifest = replace(manifest, chunks=())
        self._windows = dict(windows or {})
        self._held = np.zeros(0, dtype=np.int64)  # the held sample indices, sorted (sparse: any index is cheap)
        self._held_rows = np.zeros(0, dtype=np.int64)  # the global row of each of them
        self._chunk_starts = np.zeros(1, dtype=np.int64)  # global row of each chunk's first record
        self._records: dict[str, np.ndarray] = {}  # memory maps, opened on first read
        self._adopt(manifest.chunks)

    # -- creating and opening --------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        selector: PathSelector,
        example: Pattern,
        data: str | None = None,
        subset: str | None = None,
    ) -> PatternStore:
        """Create an empty store for the patterns of `selector`.

        Args:
            path: a directory that does not exist yet, is empty, or holds only the leftovers of a creation
                killed before it completed.
            selector: the path selector that will record the patterns; its fingerprint is stored.
            example: a pattern of at least one sample from `selector`: gives the sites, kinds and shapes.
            data: the content fingerprint of the dataset (`skqk.data.Dataset.fingerprint`), checked by `open`.
            subset: `skqk.data.subset_fingerprint` of the permutation the samples come from, checked by `open`.

        Returns:
            The new, empty store.

        Example:
            >>> store = PatternStore.create("run/patterns", selector, selector(x[:1]))
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} already exists and is not an empty directory; refusing to overwrite it")
        if example.batch_size < 1:
            raise StoreError("create needs an example pattern of at least one sample")
        if example.sites != selector.sites:
            raise StoreError(f"the example pattern has sites {example.sites}, the selector {selector.sites}")
        sites = site_specs(example, selector.windows, selector.read_through)
        manifest = Manifest(selector.fingerprint, selector.pooling, sites, (), data, subset)
        path.mkdir(parents=True, exist_ok=True)
        with store_lock(path):
            files = list(path.iterdir())
            if (path / MANIFEST).exists() or not all(is_leftover(file.name) for file in files):
                raise StoreError(f"{path} already exists and is not an empty directory; refusing to overwrite it")
            for file in files:  # of a creation killed before its manifest existed: nothing was committed
                file.unlink()
            write_manifest(path, manifest)
        return cls(path, manifest, selector.windows)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        """Whether `path` holds a store (its manifest), as opposed to nothing, an empty folder or the leftovers
        of a killed creation, which `create` accepts."""
        return (Path(path) / MANIFEST).is_file()

    @staticmethod
    def lock(path: str | os.PathLike, wait: bool = True) -> AbstractContextManager[None]:
        """Hold the writer lock of the existing folder `path` while recording into it: writers in other
        processes wait (or, with `wait` False, this call fails at once if another one holds it). `append`,
        `commit` and `remove_strays` take it themselves; hold it around a whole recording so that no other
        process takes this recording's uncommitted chunks for leftovers.

        Example:
            >>> with PatternStore.lock("run/patterns"):
            ...     store.commit([store.write_chunk(idx, selector(xb)) for idx, xb in loader])
        """
        return store_lock(Path(path), wait)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        selector: PathSelector | None = None,
        verify: bool = True,
        data: str | None = None,
        subset: str | None = None,
    ) -> PatternStore:
        """Open an existing store, checking that it is complete and intact.

        Args:
            path: the store's directory.
            selector: if given, the store must have been recorded by it (same fingerprint).
            verify: also check every chunk's checksum (reads all data, ~GB/s); sizes are always checked.
            data: if given, the store must describe this dataset (`skqk.data.Dataset.fingerprint`): its
                patterns are keyed by sample position, so on other data they would belong to other images.
            subset: if given, and the store records one, the same subset permutation (`subset_fingerprint`).

        Returns:
            The store.

        Example:
            >>> store = PatternStore.open("run/patterns", selector)
        """
        path = Path(path)
        manifest = read_manifest(path)
        if selector is not None and selector.fingerprint != manifest.fingerprint:
            raise StoreError(
                f"store {path} was recorded by another selector "
                f"(fingerprint {manifest.fingerprint} vs {selector.fingerprint})"
            )
        check_source(path, manifest, data, subset)
        for chunk in manifest.chunks:
            records = path / (chunk.name + RECORDS_SUFFIX)
            check_size(records, chunk.count * manifest.record_bytes)
            if verify and file_crc32(records, chunk.count * manifest.record_bytes) != chunk.records_crc32:
                raise StoreError(f"chunk file {records} is corrupted (bad checksum)")
        return cls(path, manifest, selector.windows if selector is not None else None)

    # -- writing ---------------------------------------------------------------------------------------------
    def append(self, indices: Tensor, pattern: Pattern) -> None:
        """Add the patterns of samples `indices` in one atomic step; first removes files of crashed writes.

        Args:
            indices: int64 sample indices, none of them held yet.
            pattern: their pattern, batch order matching `indices`, with this store's sites and shapes.

        Example:
            >>> store.append(torch.arange(128), selector(x[:128]))
        """
        with store_lock(self.path):
            self.remove_strays()
            self.commit([self.write_chunk(indices, pattern)])

    def write_chunk(self, indices: Tensor, pattern: Pattern) -> ChunkInfo:
        """Write one new chunk file pair, durably, without adding it to the store (see `commit`).

        Several processes may write chunks of disjoint samples at the same time; file names are unique.

        Args:
            indices: int64 sample indices, not held yet and not repeated.
            pattern: their pattern, batch order matching `indices`.

        Returns:
            What `commit` needs to add the chunk.

        Example:
            >>> chunk = store.write_chunk(idx, selector(xb))   # on every rank
            >>> store.commit(gathered_chunks)                   # on one rank
        """
        idx = as_indices(indices)
        if idx.size == 0:
            raise StoreError("nothing to write: no sample indices given")
        self._refuse_duplicates(idx)
        records = self._encode(pattern, idx.size)
        name = f"{CHUNK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}"
        idx_bytes = idx.astype(INDEX_DTYPE).tobytes()
        write_durably(self.path / (name + RECORDS_SUFFIX), records.data)
        write_durably(self.path / (name + INDICES_SUFFIX), idx_bytes)
        crash_point("chunk-written")
        return ChunkInfo(name, idx.size, zlib.crc32(records.data), zlib.crc32(idx_bytes))

    def commit(self, chunks: Sequence[ChunkInfo]) -> None:
        """Add written chunks to the store in one atomic manifest replacement, under the writer lock.

        Chunks another process committed since this object last looked are kept: the manifest on disk is read
        again and extended, never overwritten with this object's older view.

        Args:
            chunks: from `write_chunk` calls of any process, for disjoint samples not held yet.

        Example:
            >>> store.commit([store.write_chunk(idx_a, pat_a), store.write_chunk(idx_b, pat_b)])
        """
        new = tuple(chunks)
        with store_lock(self.path):
            self._catch_up()
            for chunk in new:
                check_size(self.path / (chunk.name + RECORDS_SUFFIX), chunk.count * self.bytes_per_sample)
            previous = (self._manifest, self._held, self._held_rows, self._chunk_starts)
            self._adopt(new)  # validates indices and duplicates before the manifest changes
            try:
                fsync_dir(self.path)
                write_manifest(self.path, self._manifest)
            except BaseException:
                self._manifest, self._held, self._held_rows, self._chunk_starts = previous
                raise
        crash_point("committed")

    def remove_strays(self) -> None:
        """Delete the leftovers of killed writes: chunk files no committed chunk owns, temporary manifests.

        Call it only while no other process is writing chunks for this store (their uncommitted chunks look
        the same); `append` calls it first.

        Example:
            >>> store.remove_strays()   # before a Phase 3 pass whose writers are all started by this process
        """
        with store_lock(self.path):
            self._catch_up()  # chunks committed by another process since this object looked are not strays
            committed = {c.name for c in self._manifest.chunks}
            for file in self.path.iterdir():
                if is_leftover(file.name) and file.name.split(".")[0] not in committed:
                    file.unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self, indices: Tensor) -> Pattern:
        """The patterns of samples `indices`, in that order (repeats allowed).

        Args:
            indices: int64 sample indices, all held.

        Returns:
            A `Pattern` of ``len(indices)`` samples on the CPU, bit-exact to what was appended.

        Example:
            >>> pattern = store.read(batch_indices)
        """
        idx = as_indices(indices)
        rows = self._rows_of(idx)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            examples = ", ".join(str(i) for i in idx[missing[:5]])
            raise StoreError(
                f"store {self.path}: {missing.size} of the {rows.size} requested samples are missing (e.g. {examples})"
            )
        return self._decode(self._gather(rows))

    def has(self, indices: Tensor | int) -> bool:
        """Whether every sample of `indices` is held (``index in store`` does the same).

        Args:
            indices: one sample index or a 1-D tensor of them.

        Returns:
            True when all are held (also for no indices at all).

        Example:
            >>> todo = [i for i in range(n) if i not in store]
        """
        return bool((self._rows_of(as_indices(indices)) >= 0).all())

    __contains__ = has

    def __len__(self) -> int:
        return int(self._chunk_starts[-1])

    def __repr__(self) -> str:
        return f"PatternStore({str(self.path)!r}, samples={len(self)}, sites={len(self.sites)})"

    @property
    def indices(self) -> Tensor:
        """The held sample indices, sorted ascending."""
        return torch.from_numpy(self._held.copy())

    @property
    def fingerprint(self) -> str:
        return self._manifest.fingerprint

    @property
    def pooling(self) -> str:
        return self._manifest.pooling

    @property
    def data(self) -> str | None:
        """Content fingerprint of the data the patterns describe (None for stores of older skqk versions)."""
        return self._manifest.data

    @property
    def subset(self) -> str | None:
        """Fingerprint of the subset permutation the samples were drawn from (None if not recorded)."""
        return self._manifest.subset

    @property
    def sites(self) -> list[str]:
        return [s.name for s in self._manifest.sites]

    @property
    def site_specs(self) -> list[SiteSpec]:
        return list(self._manifest.sites)

    @property
    def chunk_count(self) -> int:
        return len(self._manifest.chunks)

    @property
    def bytes_per_sample(self) -> int:
        return self._manifest.record_bytes

    @property
    def format_version(self) -> int:
        """The layout of this store's records (`skqk.store.format`): a store keeps the version it was created in."""
        return self._manifest.version

    def as_read(self, pattern: Pattern) -> Pattern:
        """What `read` returns for samples whose pattern is `pattern`: equal to it on every state an estimator
        reads; a gate state that only a frozen max-pool reads is kept only where the pool's switches select it.

        Example:
            >>> assert store.read(idx) == store.as_read(selector(x))
        """
        return self._decode(self._encode(pattern, pattern.batch_size))

    @property
    def nbytes_on_disk(self) -> int:
        """Bytes of the manifest and the committed chunk files (stray files of crashed writes not counted)."""
        per_sample = self.bytes_per_sample + INDEX_DTYPE.itemsize
        return (self.path / MANIFEST).stat().st_size + len(self) * per_sample

    def info(self) -> dict[str, Any]:
        """Summary for ``skqk patterns info``: layout, sizes and each gate site's active fraction.

        Returns:
            A JSON-serialisable dict; the active fractions stream over all stored samples (None when empty).

        Example:
            >>> print(format_info(store.info()))
        """
        return store_info(self)

    # -- internals -------------------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Adopt the chunks that the manifest on disk holds and this object does not know yet."""
        on_disk = read_manifest(self.path)
        if replace(on_disk, chunks=()) != replace(self._manifest, chunks=()):
            raise StoreError(f"store {self.path} was replaced by another store since it was opened")
        known = {c.name for c in self._manifest.chunks}
        self._adopt(tuple(c for c in on_disk.chunks if c.name not in known))

    def _adopt(self, chunks: tuple[ChunkInfo, ...]) -> None:
        """Extend the sample index by `chunks` (after checking their index files) and record them."""
        if not chunks:
            return
        new = np.concatenate([read_chunk_indices(self.path, c) for c in chunks])
        self._refuse_duplicates(new)
        first = len(self)
        held = np.concatenate([self._held, new])
        order = np.argsort(held, kind="stable")
        self._held = held[order]
        self._held_rows = np.concatenate([self._held_rows, np.arange(first, first + new.size)])[order]
        counts = np.cumsum([c.count for c in chunks])
        self._chunk_starts = np.concatenate([self._chunk_starts, first + counts])
        self._manifest = replace(self._manifest, chunks=self._manifest.chunks + chunks)

    def _refuse_duplicates(self, new: np.ndarray) -> None:
        values, counts = np.unique(new, return_counts=True)
        duplicate = (counts > 1) | (self._rows_of(values) >= 0)
        if duplicate.any():
            examples = ", ".join(str(i) for i in values[duplicate][:5])
            raise StoreError(
                f"store {self.path}: cannot add samples already held or given twice "
                f"({int(duplicate.sum())} of them, e.g. {examples})"
            )

    def _rows_of(self, idx: np.ndarray) -> np.ndarray:
        """The global row of each sample index, -1 where it is not held."""
        if not len(self._held):
            return np.full(idx.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._held, idx), len(self._held) - 1)
        return np.where(self._held[at] == idx, self._held_rows[at], -1)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Copy the records of global `rows` out of the memory-mapped chunks, one fancy index per chunk."""
        out = np.empty((rows.size, self.bytes_per_sample), dtype=np.uint8)
        chunk_of = np.searchsorted(self._chunk_starts, rows, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        for at in np.split(order, np.flatnonzero(np.diff(chunk_of[order])) + 1):
            if at.size:
                k = chunk_of[at[0]]
                out[at] = self.chunk_records(k)[rows[at] - self._chunk_starts[k]]
        return out

    def chunk_records(self, k: int) -> np.ndarray:
        """The records of committed chunk `k`, memory-mapped read-only (opened on first use)."""
        chunk = self._manifest.chunks[k]
        if chunk.name not in self._records:
            file = self.path / (chunk.name + RECORDS_SUFFIX)
            shape = (chunk.count, self.bytes_per_sample)
            self._records[chunk.name] = np.memmap(file, dtype=np.uint8, mode="r", shape=shape)
        return self._records[chunk.name]

    def _encode(self, pattern: Mapping[str, Tensor], n: int) -> np.ndarray:
        return encode(self._manifest.sites, pattern, n)

    def _decode(self, records: np.ndarray) -> Pattern:
        return decode(self._manifest.sites, records, self._windows)


def check_source(path: Path, manifest: Manifest, data: str | None, subset: str | None) -> None:
    """Refuse a store recorded from other data or another subset permutation than the caller's."""
    if data is not None and manifest.data is None:
        warnings.warn(f"store {path} does not record which data it describes (older skqk); not checked", stacklevel=3)
    elif data is not None and manifest.data != data:
        raise StoreError(
            f"store {path} holds the patterns of other data (data fingerprint {manifest.data[:12]}..., this data "
            f"{data[:12]}...): use the data it was recorded from, or record a new store"
        )
    if subset is not None and manifest.subset is not None and manifest.subset != subset:
        raise StoreError(
            f"store {path} was recorded for another sample subset order (--subset-seed/--balanced): use the same "
            "ones, or record a new store"
        )
