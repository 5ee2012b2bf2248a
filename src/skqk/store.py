"""The pattern store: the recorded activation patterns (SK) of the training samples, on disk (Phase 3's output).

Re-training the estimator reads every sample's pattern once per epoch, in random batches, so the store is laid
out for fast random access and for appends that can never damage what is already recorded.

A store is a directory::

    manifest.json              format version, selector fingerprint, pooling, site layout, record size and
                               the committed chunks (name, sample count, CRC-32 of both files)
    chunk-<pid>-<id>.records   immutable: one fixed-size record per sample, every site's states in site order,
                               each site starting on a byte boundary; gate bits packed 8 per byte (little bit
                               order: bit ``i`` of byte ``j`` is gate ``8 * j + i``), switches one byte each
    chunk-<pid>-<id>.indices   the chunk's sample indices (training-split positions), int64 little-endian,
                               in record order

Crash safety: appending writes new chunk files, fsyncs them, then replaces the manifest atomically (temporary
file, fsync, ``os.replace``, fsync of the directory). A write killed at any point leaves the old manifest, which
ignores the stray files, or the new one. Stray files are removed by the next `PatternStore.append`.

Several writers (e.g. torch.distributed ranks) can fill one store: each calls `PatternStore.write_chunk` for its
own disjoint samples, and a single process gathers the returned `ChunkInfo` objects and calls
`PatternStore.commit` once. Only one process may commit (or append) at a time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from skqk.atomic import fsync_dir
from skqk.patterns import SWITCH_DTYPE, Pattern

if TYPE_CHECKING:
    from skqk.selector import PathSelector

FORMAT = "skqk-pattern-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS_SUFFIX = ".records"
INDICES_SUFFIX = ".indices"
CHUNK_PREFIX = "chunk-"
_TEMP_SUFFIX = ".tmp"
_INDEX_DTYPE = np.dtype("<i8")
_STREAM_BYTES = 16 << 20  # block size for checksums and statistics: bounded memory, ~GB/s throughput
_CRASH_ENV = "SKQK_STORE_CRASH_AT"
_POPCOUNT = np.array([bin(b).count("1") for b in range(256)], dtype=np.uint8)


class StoreError(ValueError):
    """A pattern store cannot be created, opened, written or read; the one-line message says why."""


@dataclass(frozen=True)
class SiteSpec:
    """Where one gate site's states live in a record, and how they are encoded."""

    name: str
    kind: str  # "gate" (bits) or "switch" (bytes)
    shape: tuple[int, ...]  # per sample

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return (self.numel + 7) // 8 if self.kind == "gate" else self.numel

    @property
    def bits(self) -> int:
        return self.numel if self.kind == "gate" else 8 * self.numel

    @property
    def dtype(self) -> torch.dtype:
        return torch.bool if self.kind == "gate" else SWITCH_DTYPE


@dataclass(frozen=True)
class ChunkInfo:
    """A chunk written by `PatternStore.write_chunk`; part of the store once committed. Picklable, so ranks can
    gather it with ``torch.distributed.all_gather_object``."""

    name: str
    count: int
    records_crc32: int
    indices_crc32: int


@dataclass(frozen=True)
class _Manifest:
    fingerprint: str
    pooling: str
    sites: tuple[SiteSpec, ...]
    chunks: tuple[ChunkInfo, ...]

    @property
    def record_bytes(self) -> int:
        return sum(s.nbytes for s in self.sites)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "pooling": self.pooling,
                "sites": [{"name": s.name, "kind": s.kind, "shape": list(s.shape)} for s in self.sites],
                "record_bytes": self.record_bytes,
                "chunks": [asdict(c) for c in self.chunks],
            },
            indent=1,
        )


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

    def __init__(self, path: Path, manifest: _Manifest):
        """Start empty, then adopt the manifest's chunks: reads their index files, refuses duplicates."""
        self.path = path
        self._manifest = _Manifest(manifest.fingerprint, manifest.pooling, manifest.sites, ())
        self._offsets = np.cumsum([0] + [s.nbytes for s in manifest.sites]).tolist()
        self._row_of = np.full(0, -1, dtype=np.int64)  # sample index -> global row, -1 where not held
        self._chunk_starts = np.zeros(1, dtype=np.int64)  # global row of each chunk's first record
        self._records: dict[str, np.ndarray] = {}  # memory maps, opened on first read
        self._adopt(manifest.chunks)

    # -- creating and opening --------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, selector: PathSelector, example: Pattern) -> PatternStore:
        """Create an empty store for the patterns of `selector`.

        Args:
            path: a directory that does not exist yet or is empty.
            selector: the path selector that will record the patterns; its fingerprint is stored.
            example: a pattern of at least one sample from `selector`: gives the sites, kinds and shapes.

        Returns:
            The new, empty store.

        Example:
            >>> store = PatternStore.create("run/patterns", selector, selector(x[:1]))
        """
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise StoreError(f"{path} already exists and is not an empty directory; refusing to overwrite it")
        if example.batch_size < 1:
            raise StoreError("create needs an example pattern of at least one sample")
        if example.sites != selector.sites:
            raise StoreError(f"the example pattern has sites {example.sites}, the selector {selector.sites}")
        sites = tuple(SiteSpec(name, _kind_of(t.dtype), tuple(t.shape[1:])) for name, t in example.items())
        manifest = _Manifest(selector.fingerprint, selector.pooling, sites, ())
        path.mkdir(parents=True, exist_ok=True)
        _write_manifest(path, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike, selector: PathSelector | None = None, verify: bool = True) -> PatternStore:
        """Open an existing store, checking that it is complete and intact.

        Args:
            path: the store's directory.
            selector: if given, the store must have been recorded by it (same fingerprint).
            verify: also check every chunk's checksum (reads all data, ~GB/s); sizes are always checked.

        Returns:
            The store.

        Example:
            >>> store = PatternStore.open("run/patterns", selector)
        """
        path = Path(path)
        manifest = _read_manifest(path)
        if selector is not None and selector.fingerprint != manifest.fingerprint:
            raise StoreError(
                f"store {path} was recorded by another selector "
                f"(fingerprint {manifest.fingerprint} vs {selector.fingerprint})"
            )
        for chunk in manifest.chunks:
            records = path / (chunk.name + RECORDS_SUFFIX)
            _check_size(records, chunk.count * manifest.record_bytes)
            if verify and _file_crc32(records) != chunk.records_crc32:
                raise StoreError(f"chunk file {records} is corrupted (bad checksum)")
        return cls(path, manifest)

    # -- writing ---------------------------------------------------------------------------------------------
    def append(self, indices: Tensor, pattern: Pattern) -> None:
        """Add the patterns of samples `indices` in one atomic step; first removes files of crashed writes.

        Args:
            indices: int64 sample indices, none of them held yet.
            pattern: their pattern, batch order matching `indices`, with this store's sites and shapes.

        Example:
            >>> store.append(torch.arange(128), selector(x[:128]))
        """
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
        idx = _as_indices(indices)
        if idx.size == 0:
            raise StoreError("nothing to write: no sample indices given")
        self._refuse_duplicates(idx)
        records = self._encode(pattern, idx.size)
        name = f"{CHUNK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}"
        idx_bytes = idx.astype(_INDEX_DTYPE).tobytes()
        _write_durably(self.path / (name + RECORDS_SUFFIX), records.data)
        _write_durably(self.path / (name + INDICES_SUFFIX), idx_bytes)
        _crash_point("chunk-written")
        return ChunkInfo(name, idx.size, zlib.crc32(records.data), zlib.crc32(idx_bytes))

    def commit(self, chunks: Sequence[ChunkInfo]) -> None:
        """Add written chunks to the store in one atomic manifest replacement.

        Args:
            chunks: from `write_chunk` calls of any process, for disjoint samples not held yet.

        Example:
            >>> store.commit([store.write_chunk(idx_a, pat_a), store.write_chunk(idx_b, pat_b)])
        """
        new = tuple(chunks)
        for chunk in new:
            _check_size(self.path / (chunk.name + RECORDS_SUFFIX), chunk.count * self.bytes_per_sample)
        previous = (self._manifest, self._row_of, self._chunk_starts)
        self._adopt(new)  # validates indices and duplicates before the manifest changes
        try:
            fsync_dir(self.path)
            _write_manifest(self.path, self._manifest)
        except BaseException:
            self._manifest, self._row_of, self._chunk_starts = previous
            raise

    def remove_strays(self) -> None:
        """Delete the leftovers of killed writes: chunk files no committed chunk owns, temporary manifests.

        Call it only while no other process is writing chunks for this store (their uncommitted chunks look
        the same); `append` calls it first.

        Example:
            >>> store.remove_strays()   # before a Phase 3 pass whose writers are all started by this process
        """
        committed = {c.name for c in self._manifest.chunks}
        for file in self.path.iterdir():
            stray_chunk = file.name.startswith(CHUNK_PREFIX) and file.name.split(".")[0] not in committed
            stray_manifest = file.name.startswith(MANIFEST + ".") and file.name.endswith(_TEMP_SUFFIX)
            if stray_chunk or stray_manifest:
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
        idx = _as_indices(indices)
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
        return bool((self._rows_of(_as_indices(indices)) >= 0).all())

    __contains__ = has

    def __len__(self) -> int:
        return int(self._chunk_starts[-1])

    def __repr__(self) -> str:
        return f"PatternStore({str(self.path)!r}, samples={len(self)}, sites={len(self.sites)})"

    @property
    def indices(self) -> Tensor:
        """The held sample indices, sorted ascending."""
        return torch.from_numpy(np.flatnonzero(self._row_of >= 0))

    @property
    def fingerprint(self) -> str:
        return self._manifest.fingerprint

    @property
    def pooling(self) -> str:
        return self._manifest.pooling

    @property
    def sites(self) -> list[str]:
        return [s.name for s in self._manifest.sites]

    @property
    def site_specs(self) -> list[SiteSpec]:
        return list(self._manifest.sites)

    @property
    def bytes_per_sample(self) -> int:
        return self._manifest.record_bytes

    @property
    def nbytes_on_disk(self) -> int:
        """Bytes of the manifest and the committed chunk files (stray files of crashed writes not counted)."""
        per_sample = self.bytes_per_sample + _INDEX_DTYPE.itemsize
        return (self.path / MANIFEST).stat().st_size + len(self) * per_sample

    def info(self) -> dict[str, Any]:
        """Summary for ``skqk patterns info``: layout, sizes and each gate site's active fraction.

        Returns:
            A JSON-serialisable dict; the active fractions stream over all stored samples (None when empty).

        Example:
            >>> print(format_info(store.info()))
        """
        active = self._active_fractions()
        sites = self._manifest.sites
        return {
            "path": str(self.path),
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "pooling": self.pooling,
            "samples": len(self),
            "chunks": len(self._manifest.chunks),
            "gate_bits_per_sample": sum(s.numel for s in sites if s.kind == "gate"),
            "switch_bytes_per_sample": sum(s.numel for s in sites if s.kind == "switch"),
            "bytes_per_sample": self.bytes_per_sample,
            "nbytes_on_disk": self.nbytes_on_disk,
            "sites": [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "shape": list(s.shape),
                    "bits_per_sample": s.bits,
                    "active_fraction": active.get(s.name),
                }
                for s in sites
            ],
        }

    # -- internals -------------------------------------------------------------------------------------------
    def _adopt(self, chunks: tuple[ChunkInfo, ...]) -> None:
        """Extend the sample index by `chunks` (after checking their index files) and record them."""
        if not chunks:
            return
        new = np.concatenate([_read_chunk_indices(self.path, c) for c in chunks])
        self._refuse_duplicates(new)
        row_of = np.full(max(len(self._row_of), int(new.max()) + 1), -1, dtype=np.int64)
        row_of[: len(self._row_of)] = self._row_of
        first = len(self)
        row_of[new] = np.arange(first, first + new.size)
        counts = np.cumsum([c.count for c in chunks])
        self._row_of = row_of
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
        rows = np.full(idx.shape, -1, dtype=np.int64)
        known = idx < len(self._row_of)
        rows[known] = self._row_of[idx[known]]
        return rows

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Copy the records of global `rows` out of the memory-mapped chunks, one fancy index per chunk."""
        out = np.empty((rows.size, self.bytes_per_sample), dtype=np.uint8)
        chunk_of = np.searchsorted(self._chunk_starts, rows, side="right") - 1
        order = np.argsort(chunk_of, kind="stable")
        for at in np.split(order, np.flatnonzero(np.diff(chunk_of[order])) + 1):
            if at.size:
                k = chunk_of[at[0]]
                out[at] = self._chunk_records(k)[rows[at] - self._chunk_starts[k]]
        return out

    def _chunk_records(self, k: int) -> np.ndarray:
        chunk = self._manifest.chunks[k]
        if chunk.name not in self._records:
            file = self.path / (chunk.name + RECORDS_SUFFIX)
            shape = (chunk.count, self.bytes_per_sample)
            self._records[chunk.name] = np.memmap(file, dtype=np.uint8, mode="r", shape=shape)
        return self._records[chunk.name]

    def _encode(self, pattern: Mapping[str, Tensor], n: int) -> np.ndarray:
        if list(pattern) != self.sites:
            raise StoreError(f"the pattern has sites {list(pattern)}, the store {self.sites}")
        records = np.empty((n, self.bytes_per_sample), dtype=np.uint8)
        for spec, start in zip(self._manifest.sites, self._offsets):
            states = pattern[spec.name]
            if states.dtype != spec.dtype or tuple(states.shape) != (n, *spec.shape):
                raise StoreError(
                    f"site {spec.name!r}: expected {spec.dtype} states of shape {(n, *spec.shape)}, "
                    f"got {states.dtype} of shape {tuple(states.shape)}"
                )
            flat = states.detach().cpu().numpy().reshape(n, -1)
            packed = np.packbits(flat, axis=1, bitorder="little") if spec.kind == "gate" else flat
            records[:, start : start + spec.nbytes] = packed
        return records

    def _decode(self, records: np.ndarray) -> Pattern:
        n = len(records)
        states = {}
        for spec, start in zip(self._manifest.sites, self._offsets):
            part = records[:, start : start + spec.nbytes]
            if spec.kind == "gate":
                flat = np.unpackbits(part, axis=1, count=spec.numel, bitorder="little").view(np.bool_)
            else:
                flat = np.ascontiguousarray(part)
            states[spec.name] = torch.from_numpy(flat.reshape(n, *spec.shape))
        return Pattern(states)

    def _active_fractions(self) -> dict[str, float | None]:
        """Fraction of set gate bits per site, counted in bounded blocks of records (padding bits are zero)."""
        gates = [(s, start) for s, start in zip(self._manifest.sites, self._offsets) if s.kind == "gate"]
        ones = dict.fromkeys((s.name for s, _ in gates), 0)
        block = max(1, _STREAM_BYTES // self.bytes_per_sample)
        for k in range(len(self._manifest.chunks)):
            records = self._chunk_records(k)
            for first in range(0, len(records), block):
                rows = records[first : first + block]
                for spec, start in gates:
                    ones[spec.name] += int(_POPCOUNT[rows[:, start : start + spec.nbytes]].sum(dtype=np.int64))
        return {s.name: ones[s.name] / (len(self) * s.numel) if len(self) else None for s, _ in gates}


def format_info(info: dict[str, Any]) -> str:
    """Human-readable summary of `PatternStore.info` for the command line.

    Args:
        info: the dict returned by `PatternStore.info`.

    Returns:
        A multi-line text: a header, then one table row per site.

    Example:
        >>> print(format_info(PatternStore.open("run/patterns").info()))
    """
    header = [
        f"pattern store {info['path']} (format {info['format_version']}, pooling {info['pooling']})",
        f"selector     {info['fingerprint']}",
        f"samples      {info['samples']:,} in {info['chunks']} chunk(s)",
        f"per sample   {info['gate_bits_per_sample']:,} gate bits + {info['switch_bytes_per_sample']:,} switch "
        f"bytes = {info['bytes_per_sample']:,} bytes",
        f"on disk      {_human_bytes(info['nbytes_on_disk'])}",
        "",
    ]
    rows = [["site", "kind", "shape", "bits/sample", "active"]]
    for site in info["sites"]:
        active = site["active_fraction"]
        rows.append(
            [
                site["name"],
                site["kind"],
                "x".join(map(str, site["shape"])),
                f"{site['bits_per_sample']:,}",
                "-" if active is None else f"{100 * active:.1f}%",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(header + table)


# -- file helpers --------------------------------------------------------------------------------------------
def _kind_of(dtype: torch.dtype) -> str:
    return "gate" if dtype == torch.bool else "switch"


def _as_indices(indices: Tensor | int) -> np.ndarray:
    """Sample indices as a 1-D int64 numpy array; refuses floats, bools and negative values."""
    t = torch.as_tensor(indices)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
        raise StoreError(f"sample indices must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    idx = t.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if idx.size and idx.min() < 0:
        raise StoreError(f"sample indices must be non-negative, got {idx.min()}")
    return idx


def _read_manifest(path: Path) -> _Manifest:
    """Parse and validate manifest.json; every problem becomes a one-line StoreError."""
    try:
        doc = json.loads((path / MANIFEST).read_bytes())
    except OSError:
        raise StoreError(f"no pattern store at {path} (cannot read {MANIFEST})") from None
    except ValueError as e:
        raise StoreError(f"store {path}: {MANIFEST} is not valid JSON ({_one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"store {path}: {MANIFEST} is not a skqk pattern store manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"store {path}: format version {doc.get('version')!r} is not supported "
            f"(this skqk reads version {FORMAT_VERSION})"
        )
    try:
        manifest = _Manifest(
            fingerprint=str(doc["fingerprint"]),
            pooling=str(doc["pooling"]),
            sites=tuple(_parse_site(s) for s in doc["sites"]),
            chunks=tuple(_parse_chunk(c) for c in doc["chunks"]),
        )
        if doc["record_bytes"] != manifest.record_bytes:
            raise ValueError(f"record_bytes {doc['record_bytes']} disagrees with the sites")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StoreError(f"store {path}: malformed {MANIFEST} ({type(e).__name__}: {_one_line(e)})") from None
    return manifest


def _parse_site(doc: dict) -> SiteSpec:
    spec = SiteSpec(str(doc["name"]), doc["kind"], tuple(int(d) for d in doc["shape"]))
    if spec.kind not in ("gate", "switch") or min(spec.shape, default=1) < 1:
        raise ValueError(f"bad site {doc}")
    return spec


def _parse_chunk(doc: dict) -> ChunkInfo:
    chunk = ChunkInfo(doc["name"], int(doc["count"]), int(doc["records_crc32"]), int(doc["indices_crc32"]))
    if not (chunk.name.startswith(CHUNK_PREFIX) and chunk.name.replace("-", "").isalnum()) or chunk.count < 1:
        raise ValueError(f"bad chunk {doc}")
    return chunk


def _read_chunk_indices(path: Path, chunk: ChunkInfo) -> np.ndarray:
    file = path / (chunk.name + INDICES_SUFFIX)
    _check_size(file, chunk.count * _INDEX_DTYPE.itemsize)
    data = file.read_bytes()
    if zlib.crc32(data) != chunk.indices_crc32:
        raise StoreError(f"chunk file {file} is corrupted (bad checksum)")
    idx = np.frombuffer(data, dtype=_INDEX_DTYPE).astype(np.int64)
    if idx.min() < 0:
        raise StoreError(f"chunk file {file} holds negative sample indices")
    return idx


def _check_size(file: Path, expected: int) -> None:
    try:
        actual = file.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"chunk file {file} is missing") from None
    if actual != expected:
        raise StoreError(f"chunk file {file} has {actual} bytes instead of {expected} (truncated or overwritten)")


def _file_crc32(file: Path) -> int:
    """CRC-32 of a file, streamed through one reused buffer (zlib's crc32 runs at several GB/s)."""
    crc = 0
    buffer = bytearray(min(_STREAM_BYTES, file.stat().st_size))
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def _write_durably(file: Path, data: bytes | memoryview) -> None:
    """Write a new file (never an existing one) and fsync it, so a manifest never points at unflushed data."""
    with open(file, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_manifest(path: Path, manifest: _Manifest) -> None:
    """Replace manifest.json atomically: readers and crashes see the old or the new one, never a mix."""
    temp = path / f"{MANIFEST}.{os.getpid()}-{uuid.uuid4().hex[:16]}{_TEMP_SUFFIX}"
    _write_durably(temp, manifest.to_json().encode())
    _crash_point("manifest-written")
    os.replace(temp, path / MANIFEST)
    fsync_dir(path)


def _crash_point(step: str) -> None:
    """Test hook: SIGKILL this process at `step` of a write when $SKQK_STORE_CRASH_AT names it, so the tests can
    check that a crash exactly there leaves the store intact."""
    if os.environ.get(_CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _human_bytes(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
