"""The pattern store's on-disk format and durability (Phase 3's output, read by every QK re-training epoch).

Re-training the estimator reads every sample's pattern once per epoch, in random batches, so the store is laid
out for fast random access and for appends that can never damage what is already recorded.

A store is a directory::

    manifest.json              format version, selector fingerprint, pooling, site layout, record size and
                               the committed chunks (name, sample count, CRC-32 of both files)
    chunk-<pid>-<id>.records   immutable: one fixed-size record per sample, every site's states in site order,
                               each site starting on a byte boundary; two-piece gate states packed 8 per byte
                               (little bit order: bit ``i`` of byte ``j`` is gate ``8 * j + i``), three-piece
                               gate states (ReLU6, Hardtanh, clamp) 2 bits each, 4 per byte (bits ``2i, 2i+1`` of
                               byte ``j`` are unit ``4 * j + i``), switches one byte each
    chunk-<pid>-<id>.indices   the chunk's sample indices (training-split positions), int64 little-endian,
                               in record order

The manifest also names the data the patterns describe (`skqk.data` content fingerprint) and the permutation
whose prefixes are the recorded subsets, so a store is never continued or read with other data.

Crash safety: appending writes new chunk files, fsyncs them, then replaces the manifest atomically (temporary
file, fsync, ``os.replace``, fsync of the directory). A write killed at any point leaves the old manifest, which
ignores the stray files, or the new one. Stray files are removed by the next `PatternStore.append`. A creation
killed before its manifest was written leaves a folder that the next creation takes over.

Concurrency: writers hold an advisory lock (``flock``) on the store's folder, so one process writes at a time
(others wait, or fail at once if asked not to wait), and every commit merges with the manifest on disk.
Several writers of one recording (e.g. torch.distributed ranks) can still fill one store together: each calls
`PatternStore.write_chunk` for its own disjoint samples, and the lock holder gathers the returned `ChunkInfo`
objects and calls `PatternStore.commit`. Readers take no lock: they see the last committed manifest.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import signal
import uuid
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from skqk._errors import one_line
from skqk.atomic import fsync_dir
from skqk.patterns import SWITCH_BITS, SWITCH_DTYPE, Pattern

FORMAT = "skqk-pattern-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RECORDS_SUFFIX = ".records"
INDICES_SUFFIX = ".indices"
CHUNK_PREFIX = "chunk-"
TEMP_SUFFIX = ".tmp"
INDEX_DTYPE = np.dtype("<i8")
STREAM_BYTES = 16 << 20  # block size for checksums and statistics: bounded memory, ~GB/s throughput
CRASH_ENV = "SKQK_STORE_CRASH_AT"


class StoreError(ValueError):
    """A pattern store cannot be created, opened, written or read; the one-line message says why."""


BITS_PER_UNIT = {"gate": 1, "piece": 2, "switch": SWITCH_BITS}  # two-piece gate, three-piece gate, max-pool switch


@dataclass(frozen=True)
class SiteSpec:
    """Where one gate site's states live in a record, and how they are encoded."""

    name: str
    kind: str  # "gate" (1 bit per unit), "piece" (2 bits per unit) or "switch" (a byte per unit)
    shape: tuple[int, ...]  # per sample

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    @property
    def bits(self) -> int:
        return BITS_PER_UNIT[self.kind] * self.numel

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
class Manifest:
    fingerprint: str
    pooling: str
    sites: tuple[SiteSpec, ...]
    chunks: tuple[ChunkInfo, ...]
    data: str | None = None  # content fingerprint of the dataset (None: a store written before it was recorded)
    subset: str | None = None  # fingerprint of the subset permutation the samples were drawn from

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
                "data": self.data,
                "subset": self.subset,
            },
            indent=1,
        )


def encode(sites: tuple[SiteSpec, ...], pattern: Mapping[str, Tensor], n: int) -> np.ndarray:
    """The fixed-size records of `n` samples' `pattern`: gate bits packed little-endian, switches one byte each."""
    if list(pattern) != [s.name for s in sites]:
        raise StoreError(f"the pattern has sites {list(pattern)}, the store {[s.name for s in sites]}")
    records = np.empty((n, sum(s.nbytes for s in sites)), dtype=np.uint8)
    for spec, start in zip(sites, site_offsets(sites)):
        states = pattern[spec.name]
        if states.dtype != spec.dtype or tuple(states.shape) != (n, *spec.shape):
            raise StoreError(
                f"site {spec.name!r}: expected {spec.dtype} states of shape {(n, *spec.shape)}, "
                f"got {states.dtype} of shape {tuple(states.shape)}"
            )
        flat = states.detach().cpu().numpy().reshape(n, -1)
        if spec.kind == "piece" and flat.size and flat.max() > 2:
            raise StoreError(f"site {spec.name!r}: three-piece states must be 0, 1 or 2, got {flat.max()}")
        records[:, start : start + spec.nbytes] = _pack(flat, spec.kind)
    return records


def decode(sites: tuple[SiteSpec, ...], records: np.ndarray) -> Pattern:
    """The `Pattern` of `records` (the inverse of `encode`)."""
    n = len(records)
    states = {}
    for spec, start in zip(sites, site_offsets(sites)):
        part = records[:, start : start + spec.nbytes]
        states[spec.name] = torch.from_numpy(_unpack(part, spec).reshape(n, *spec.shape))
    return Pattern(states, {s.name: BITS_PER_UNIT[s.kind] for s in sites})


def _pack(flat: np.ndarray, kind: str) -> np.ndarray:
    if kind == "gate":
        return np.packbits(flat, axis=1, bitorder="little")
    if kind == "switch":
        return flat
    padded = np.zeros((len(flat), -(-flat.shape[1] // 4) * 4), dtype=np.uint8)
    padded[:, : flat.shape[1]] = flat
    quads = padded.reshape(len(flat), -1, 4)
    return quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4 | quads[..., 3] << 6


def _unpack(part: np.ndarray, spec: SiteSpec) -> np.ndarray:
    if spec.kind == "gate":
        return np.unpackbits(part, axis=1, count=spec.numel, bitorder="little").view(np.bool_)
    if spec.kind == "switch":
        return np.ascontiguousarray(part)
    quads = (part[..., None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    return np.ascontiguousarray(quads.reshape(len(part), -1)[:, : spec.numel])


def site_offsets(sites: tuple[SiteSpec, ...]) -> list[int]:
    """Byte offset of each site's states in a record (each site starts on a byte boundary)."""
    return np.cumsum([0] + [s.nbytes for s in sites]).tolist()


def kind_of(bits_per_unit: int) -> str:
    """The store kind of a site whose units cost `bits_per_unit` (`Pattern.bits`)."""
    return {bits: kind for kind, bits in BITS_PER_UNIT.items()}[bits_per_unit]


def as_indices(indices: Tensor | int) -> np.ndarray:
    """Sample indices as a 1-D int64 numpy array; refuses floats, bools and negative values."""
    t = torch.as_tensor(indices)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or t.dim() > 1:
        raise StoreError(f"sample indices must be a 1-D integer tensor, got {t.dtype} of shape {tuple(t.shape)}")
    idx = t.detach().cpu().reshape(-1).to(torch.int64).numpy()
    if idx.size and idx.min() < 0:
        raise StoreError(f"sample indices must be non-negative, got {idx.min()}")
    return idx


def read_manifest(path: Path) -> Manifest:
    """Parse and validate manifest.json; every problem becomes a one-line StoreError."""
    try:
        doc = json.loads((path / MANIFEST).read_bytes())
    except OSError:
        raise StoreError(f"no pattern store at {path} (cannot read {MANIFEST})") from None
    except ValueError as e:
        raise StoreError(f"store {path}: {MANIFEST} is not valid JSON ({one_line(e)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"store {path}: {MANIFEST} is not a skqk pattern store manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise StoreError(
            f"store {path}: format version {doc.get('version')!r} is not supported "
            f"(this skqk reads version {FORMAT_VERSION})"
        )
    try:
        manifest = Manifest(
            fingerprint=str(doc["fingerprint"]),
            pooling=str(doc["pooling"]),
            sites=tuple(_parse_site(s) for s in doc["sites"]),
            chunks=tuple(_parse_chunk(c) for c in doc["chunks"]),
            data=doc.get("data"),
            subset=doc.get("subset"),
        )
        if doc["record_bytes"] != manifest.record_bytes:
            raise ValueError(f"record_bytes {doc['record_bytes']} disagrees with the sites")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise StoreError(f"store {path}: malformed {MANIFEST} ({type(e).__name__}: {one_line(e)})") from None
    return manifest


def _parse_site(doc: dict) -> SiteSpec:
    spec = SiteSpec(str(doc["name"]), doc["kind"], tuple(int(d) for d in doc["shape"]))
    if spec.kind not in BITS_PER_UNIT or min(spec.shape, default=1) < 1:
        raise ValueError(f"bad site {doc}")
    return spec


def _parse_chunk(doc: dict) -> ChunkInfo:
    chunk = ChunkInfo(doc["name"], int(doc["count"]), int(doc["records_crc32"]), int(doc["indices_crc32"]))
    if not (chunk.name.startswith(CHUNK_PREFIX) and chunk.name.replace("-", "").isalnum()) or chunk.count < 1:
        raise ValueError(f"bad chunk {doc}")
    return chunk


def read_chunk_indices(path: Path, chunk: ChunkInfo) -> np.ndarray:
    file = path / (chunk.name + INDICES_SUFFIX)
    check_size(file, chunk.count * INDEX_DTYPE.itemsize)
    data = file.read_bytes()
    if zlib.crc32(data) != chunk.indices_crc32:
        raise StoreError(f"chunk file {file} is corrupted (bad checksum)")
    idx = np.frombuffer(data, dtype=INDEX_DTYPE).astype(np.int64)
    if idx.min() < 0:
        raise StoreError(f"chunk file {file} holds negative sample indices")
    return idx


def check_size(file: Path, expected: int) -> None:
    try:
        actual = file.stat().st_size
    except FileNotFoundError:
        raise StoreError(f"chunk file {file} is missing") from None
    if actual != expected:
        raise StoreError(f"chunk file {file} has {actual} bytes instead of {expected} (truncated or overwritten)")


def file_crc32(file: Path) -> int:
    """CRC-32 of a file, streamed through one reused buffer (zlib's crc32 runs at several GB/s)."""
    crc = 0
    buffer = bytearray(min(STREAM_BYTES, file.stat().st_size))
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            crc = zlib.crc32(view[:n], crc)
    return crc


def write_durably(file: Path, data: bytes | memoryview) -> None:
    """Write a new file (never an existing one) and fsync it, so a manifest never points at unflushed data."""
    with open(file, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Replace manifest.json atomically: readers and crashes see the old or the new one, never a mix."""
    temp = path / f"{MANIFEST}.{os.getpid()}-{uuid.uuid4().hex[:16]}{TEMP_SUFFIX}"
    write_durably(temp, manifest.to_json().encode())
    crash_point("manifest-written")
    os.replace(temp, path / MANIFEST)
    fsync_dir(path)


_LOCKED: dict[str, int] = {}  # folders whose lock this process holds -> nesting depth (flock is per open file)


@contextmanager
def store_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold the exclusive writer lock of the store folder `path` (an advisory ``flock``, released when the
    process ends, however it ends). Re-entrant within a process.

    Raises:
        StoreError: `wait` is False and another process holds the lock.
    """
    key = os.path.realpath(path)
    if key in _LOCKED:
        _LOCKED[key] += 1
        try:
            yield
        finally:
            _LOCKED[key] -= 1
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise StoreError(
                    f"store {path} is being written by another process; try again when it is done"
                ) from None
            warnings.warn(f"store {path} is being written by another process; waiting for it", stacklevel=3)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _LOCKED[key] = 1
        try:
            yield
        finally:
            del _LOCKED[key]
    finally:
        os.close(fd)  # releases the lock


def is_leftover(name: str) -> bool:
    """Whether a file in a store folder is one a killed write leaves: a chunk file or a temporary manifest."""
    return name.startswith(CHUNK_PREFIX) or (name.startswith(MANIFEST + ".") and name.endswith(TEMP_SUFFIX))


def crash_point(step: str) -> None:
    """Test hook: SIGKILL this process at `step` of a write when $SKQK_STORE_CRASH_AT names it, so the tests can
    check that a crash exactly there leaves the store intact."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
