"""The pattern store's on-disk format and durability (Phase 3's output, read by every QK re-training epoch).

Re-training the estimator reads every sample's pattern once per epoch, in random batches, so the store is laid
out for fast random access and for appends that can never damage what is already recorded.

A store is a directory::

    manifest.json              format version, selector fingerprint, pooling, site layout, record size and
                               the committed chunks (name, sample count, CRC-32 of both files)
    chunk-<pid>-<id>.records   immutable: one fixed-size record per sample, every site's states in site order,
                               each site starting on a byte boundary, as one little-endian bit stream of fixed-width
                               fields (unit ``u`` of a site of width ``w`` is bits ``w*u .. w*u + w - 1``, lowest
                               first; bit ``i`` of byte ``j`` is stream bit ``8*j + i``): two-piece gate states 1 bit,
                               three-piece gate states (ReLU6, Hardtanh, clamp) 2 bits (0 below, 1 linear, 2 above),
                               max-pool switches ceil(log2(window size)) bits (2 for 2x2 windows, 4 for 3x3)
    chunk-<pid>-<id>.indices   the chunk's sample indices (training-split positions), int64 little-endian,
                               in record order

A gate site whose output only a frozen max-pool reads (`PathSelector.read_through`: a ReLU right before a pool)
keeps its states only at the elements the pool's switches select, one per pool output, since no other state of it
ever reaches an output; a read puts them back there (the rest read 0). So the estimator gets exactly the values
and gradients it got from the full states, with a quarter of them stored for 2x2 pooling.

Version 1 stores (switches a byte each, every gate state kept) are read, and appended to, in their own layout.

The manifest also names the data the patterns describe (`skqk.data` content fingerprint) and the permutation
whose prefixes are the recorded subsets, so a store is never continued or read with other data.

A store is data, never code: reading one only parses JSON and fixed-size records. Every file is opened without
blocking and read only if it is a regular file of the size the manifest implies; every field is type-checked, so a
damaged or hostile store ends in a one-line `StoreError`. The CRC-32s detect accidental corruption, not forgery:
whoever can write the files can recompute them. What a forged record can still claim is checked on read: a
switch outside its pooling window (or, for a kept-at-switch gate, pointing outside the input) is refused.

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
import functools
import json
import math
import os
import signal
import stat
import uuid
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from skqk._errors import one_line
from skqk.atomic import fsync_dir
from skqk.gates import PoolWindow
from skqk.patterns import SWITCH_BITS, SWITCH_DTYPE, Pattern

FORMAT = "skqk-pattern-store"
FORMAT_VERSION = 2  # 2: switches packed to their window's bits, gates read only through a pool kept at its switches
READABLE_VERSIONS = (1, 2)
MAX_MANIFEST_BYTES = 256 << 20  # ~1.7 million chunks; a larger manifest.json is refused before it is read
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


BITS_PER_UNIT = {"gate": 1, "piece": 2, "switch": SWITCH_BITS}  # per unit in memory (`Pattern.bits`)


@dataclass(frozen=True)
class SiteSpec:
    """Where one gate site's states live in a record, and how they are encoded."""

    name: str
    kind: str  # "gate" (a two-piece gate's bool), "piece" (a three-piece gate's 0/1/2) or "switch" (a max-pool's)
    shape: tuple[int, ...]  # per sample, as the selector gives them
    width: int  # bits per stored state
    window: PoolWindow | None = None  # switch sites: the windows (None for a version 1 store's switches)
    through: str | None = None  # the switch site whose selected elements alone are kept (`PathSelector.read_through`)
    kept: tuple[int, ...] | None = None  # with `through`: that site's shape, one kept state per pool output

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def units(self) -> int:
        """States stored per sample."""
        return math.prod(self.kept) if self.through else self.numel

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    @property
    def bits(self) -> int:
        return self.width * self.units

    @property
    def dtype(self) -> torch.dtype:
        return torch.bool if self.kind == "gate" else SWITCH_DTYPE


def site_specs(
    example: Pattern, windows: Mapping[str, PoolWindow], read_through: Mapping[str, str], version: int = FORMAT_VERSION
) -> tuple[SiteSpec, ...]:
    """The record layout of a selector's patterns (its `windows` and `read_through`), like `example`'s."""
    shapes = {name: tuple(states.shape[1:]) for name, states in example.items()}
    specs = []
    for name, shape in shapes.items():
        kind = kind_of(example.bits[name])
        if version == 1:
            specs.append(SiteSpec(name, kind, shape, BITS_PER_UNIT[kind]))
        elif kind == "switch":
            specs.append(SiteSpec(name, kind, shape, windows[name].switch_bits, windows[name]))
        else:
            through = read_through.get(name)
            specs.append(SiteSpec(name, kind, shape, BITS_PER_UNIT[kind], None, through, through and shapes[through]))
    return tuple(specs)


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
    version: int = FORMAT_VERSION  # the layout of its records: a store keeps the version it was created with

    @property
    def record_bytes(self) -> int:
        return record_bytes(self.sites)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": self.version,
                "fingerprint": self.fingerprint,
                "pooling": self.pooling,
                "sites": [_site_json(s, self.version) for s in self.sites],
                "record_bytes": self.record_bytes,
                "chunks": [asdict(c) for c in self.chunks],
                "data": self.data,
                "subset": self.subset,
            },
            indent=1,
        )


def record_bytes(sites: tuple[SiteSpec, ...]) -> int:
    """Bytes of one sample's record."""
    return sum(s.nbytes for s in sites)


def _site_json(spec: SiteSpec, version: int) -> dict:
    doc = {"name": spec.name, "kind": spec.kind, "shape": list(spec.shape)}
    if version >= 2 and spec.window is not None:
        doc["window"] = {k: list(v) for k, v in asdict(spec.window).items()}
    if version >= 2 and spec.through is not None:
        doc["read_through"] = spec.through
    return doc


def encode(sites: tuple[SiteSpec, ...], pattern: Mapping[str, Tensor], n: int) -> np.ndarray:
    """The fixed-size records of `n` samples' `pattern` (the layout is in the module docstring)."""
    if list(pattern) != [s.name for s in sites]:
        raise StoreError(f"the pattern has sites {list(pattern)}, the store {[s.name for s in sites]}")
    flat = {}
    for spec in sites:
        states = pattern[spec.name]
        if states.dtype != spec.dtype or tuple(states.shape) != (n, *spec.shape):
            raise StoreError(
                f"site {spec.name!r}: expected {spec.dtype} states of shape {(n, *spec.shape)}, "
                f"got {states.dtype} of shape {tuple(states.shape)}"
            )
        flat[spec.name] = states.detach().cpu().numpy().reshape(n, -1).view(np.uint8)
        limit = 3 if spec.kind == "piece" else spec.window.size if spec.window else 1 << spec.width
        if flat[spec.name].size and flat[spec.name].max() >= limit:
            raise StoreError(f"site {spec.name!r}: states must be below {limit}, got {flat[spec.name].max()}")
    records = np.empty((n, record_bytes(sites)), dtype=np.uint8)
    by_name = {s.name: s for s in sites}
    for spec, start in zip(sites, site_offsets(sites)):
        states = flat[spec.name]
        if spec.through:
            selected = _selected(by_name[spec.through], flat[spec.through], spec)
            states = np.take_along_axis(states.reshape(selected.shape[0], selected.shape[1], -1), selected, -1)
        records[:, start : start + spec.nbytes] = pack(states.reshape(n, -1), spec.width)
    return records


def decode(
    sites: tuple[SiteSpec, ...], records: np.ndarray, windows: Mapping[str, PoolWindow] | None = None
) -> Pattern:
    """The `Pattern` of `records` (the inverse of `encode` on every state an estimator reads). Refuses switches
    outside their window (`windows` adds the windows a version 1 store does not record)."""
    n = len(records)
    flat = {}
    for spec, start in zip(sites, site_offsets(sites)):
        flat[spec.name] = unpack(records[:, start : start + spec.nbytes], spec.width, spec.units)
        window = spec.window or (windows or {}).get(spec.name)
        if window is not None and 1 << spec.width > window.size and flat[spec.name].size:
            if flat[spec.name].max() >= window.size:
                raise StoreError(
                    f"site {spec.name!r}: a stored switch is {flat[spec.name].max()}, outside its "
                    f"{window.kernel_size[0]}x{window.kernel_size[1]} pooling window (a damaged or forged store)"
                )
    by_name = {s.name: s for s in sites}
    for spec in sites:
        if spec.through:
            selected = _selected(by_name[spec.through], flat[spec.through], spec)
            full = np.zeros((*selected.shape[:2], math.prod(spec.shape[-2:])), dtype=np.uint8)
            np.put_along_axis(full, selected, flat[spec.name].reshape(selected.shape), -1)
            flat[spec.name] = full
    states = {}
    for spec in sites:
        values = flat[spec.name].reshape(n, *spec.shape)
        states[spec.name] = torch.from_numpy(values.view(np.bool_) if spec.kind == "gate" else values)
    return Pattern(states, {s.name: BITS_PER_UNIT[s.kind] for s in sites})


def _selected(pool: SiteSpec, switches: np.ndarray, spec: SiteSpec) -> np.ndarray:
    """int64 (n, leading units, pool outputs per plane): the flat position in `spec`'s (H, W) plane that each
    switch of `pool` selects, as `skqk.gates.MaxPoolGate` routes it; refuses positions outside the plane."""
    h, w = spec.shape[-2:]
    h_out, w_out = pool.shape[-2:]
    rows, cols = _window_table(pool.window, h_out, w_out)
    switches = switches.reshape(len(switches), math.prod(pool.shape[:-2]), h_out * w_out).astype(np.intp)
    position = np.arange(h_out * w_out)
    row, col = rows[switches, position], cols[switches, position]
    if ((row < 0) | (row >= h) | (col < 0) | (col >= w)).any():
        raise StoreError(f"site {pool.name!r}: a stored switch selects an element outside the input (damaged, forged)")
    return row * w + col


@functools.lru_cache(maxsize=64)
def _window_table(window: PoolWindow, h_out: int, w_out: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(t.numpy() for t in window.positions(h_out, w_out))


def pack(values: np.ndarray, width: int) -> np.ndarray:
    """(n, m) uint8 values below ``2**width`` as one little-endian bit stream of `width`-bit fields per row."""
    if width == 8:
        return values
    bits = (values[..., None] >> np.arange(width, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(len(values), -1), axis=1, bitorder="little")


def unpack(part: np.ndarray, width: int, count: int) -> np.ndarray:
    """The (n, `count`) uint8 values of `pack`."""
    if width == 8:
        return np.ascontiguousarray(part)
    bits = np.unpackbits(part, axis=1, count=count * width, bitorder="little")
    if width == 1:
        return bits
    return np.packbits(bits.reshape(len(part), count, width), axis=-1, bitorder="little").reshape(len(part), count)


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


# -- reading the files: every one checked before it is trusted ----------------------------------------------------
def read_manifest(path: Path) -> Manifest:
    """Parse and validate manifest.json; every problem becomes a one-line StoreError."""
    file = path / MANIFEST
    try:
        with open_regular(file) as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise StoreError(f"store {path}: {MANIFEST} has {size:,} bytes, more than a manifest can hold")
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise StoreError(f"no pattern store at {path} (cannot read {MANIFEST})") from None
    except OSError as e:
        raise StoreError(f"no pattern store at {path} (cannot read {MANIFEST}: {one_line(e.strerror or e)})") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise StoreError(f"store {path}: {MANIFEST} grew past {MAX_MANIFEST_BYTES:,} bytes while being read")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StoreError(f"store {path}: {MANIFEST} is not valid JSON ({one_line(e, 200)})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StoreError(f"store {path}: {MANIFEST} is not a skqk pattern store manifest")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise StoreError(
            f"store {path}: format version {one_line(repr(version), 40)} is not supported "
            f"(this skqk reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    try:
        manifest = Manifest(
            fingerprint=_typed(doc, "fingerprint", str),
            pooling=_typed(doc, "pooling", str),
            sites=_parse_sites(_typed(doc, "sites", list), version),
            chunks=tuple(_parse_chunk(c) for c in _typed(doc, "chunks", list)),
            data=_typed(doc, "data", str, optional=True),
            subset=_typed(doc, "subset", str, optional=True),
            version=version,
        )
        if _typed(doc, "record_bytes", int) != manifest.record_bytes:
            raise ValueError(f"record_bytes {doc['record_bytes']} disagrees with the sites")
        names = [c.name for c in manifest.chunks]
        if len(set(names)) != len(names):
            raise ValueError("a chunk is listed twice")
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
        raise StoreError(f"store {path}: malformed {MANIFEST} ({type(e).__name__}: {one_line(e, 200)})") from None
    return manifest


def _typed(doc: dict, key: str, kind: type, optional: bool = False):
    """`doc[key]`, which must be a `kind` (bool is no int here), or absent/None when `optional`."""
    if not isinstance(doc, dict):
        raise TypeError(f"expected an object, got {type(doc).__name__}")
    value = doc.get(key) if optional else doc[key]
    if (value is None and optional) or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise TypeError(f"{key!r} must be {kind.__name__}, got {type(value).__name__}")


WINDOW_FIELDS = (("kernel_size", 1), ("stride", 1), ("padding", 0), ("dilation", 1))  # `PoolWindow`'s, least values


def _pair_of(doc: dict, key: str, low: int) -> tuple[int, int]:
    value = _typed(doc, key, list)
    if len(value) != 2 or not all(type(v) is int and low <= v < 1 << 16 for v in value):
        raise ValueError(f"window {key} must be two integers >= {low}, got {value}")
    return tuple(value)


def _parse_sites(docs: list, version: int) -> tuple[SiteSpec, ...]:
    parsed = {}
    for doc in docs:
        kind, name = _typed(doc, "kind", str), _typed(doc, "name", str)
        shape = tuple(_typed(doc, "shape", list))
        if kind not in BITS_PER_UNIT or not all(type(d) is int and 1 <= d < 1 << 31 for d in shape):
            raise ValueError(f"bad site {doc}")
        if name in parsed:
            raise ValueError(f"site {name!r} is listed twice")
        window = doc.get("window") if version >= 2 else None
        if (kind == "switch") != (window is not None) and version >= 2:
            raise ValueError(f"site {name!r}: a window belongs to every switch site and to nothing else")
        if window is not None:
            window = PoolWindow(*(_pair_of(window, key, low) for key, low in WINDOW_FIELDS))
            if window.size > 1 << SWITCH_BITS or len(shape) < 2:
                raise ValueError(f"site {name!r}: window {window.kernel_size} on shape {shape}")
        width = window.switch_bits if window is not None else BITS_PER_UNIT[kind]
        through = _typed(doc, "read_through", str, optional=True) if version >= 2 else None
        parsed[name] = SiteSpec(name, kind, shape, width, window, through)
    return tuple(_resolve_through(spec, parsed) for spec in parsed.values())


def _resolve_through(spec: SiteSpec, sites: dict[str, SiteSpec]) -> SiteSpec:
    """Check that a kept-at-switch gate names a switch site over the same planes, and record its shape."""
    if spec.through is None:
        return spec
    pool = sites.get(spec.through)
    if spec.kind == "switch" or pool is None or pool.kind != "switch" or pool.window is None:
        raise ValueError(f"site {spec.name!r} is read through {spec.through!r}, which is no switch site")
    if len(spec.shape) < 2 or spec.shape[:-2] != pool.shape[:-2]:
        raise ValueError(f"site {spec.name!r} of shape {spec.shape} cannot be pooled into {pool.shape}")
    return replace(spec, kept=pool.shape)


def _parse_chunk(doc: dict) -> ChunkInfo:
    chunk = ChunkInfo(
        _typed(doc, "name", str),
        _typed(doc, "count", int),
        _typed(doc, "records_crc32", int),
        _typed(doc, "indices_crc32", int),
    )
    valid_name = chunk.name.startswith(CHUNK_PREFIX) and chunk.name.replace("-", "").isalnum() and chunk.name.isascii()
    crcs_valid = all(0 <= crc < 1 << 32 for crc in (chunk.records_crc32, chunk.indices_crc32))
    if not valid_name or not 1 <= chunk.count < 1 << 40 or not crcs_valid:
        raise ValueError(f"bad chunk {doc}")
    return chunk


def read_chunk_indices(path: Path, chunk: ChunkInfo) -> np.ndarray:
    file = path / (chunk.name + INDICES_SUFFIX)
    size = chunk.count * INDEX_DTYPE.itemsize
    try:
        with open_regular(file) as f:
            check_size(file, size, os.fstat(f.fileno()))
            data = f.read(size + 1)
    except FileNotFoundError:
        raise StoreError(f"chunk file {file} is missing") from None
    if zlib.crc32(data) != chunk.indices_crc32:
        raise StoreError(f"chunk file {file} is corrupted (bad checksum)")
    idx = np.frombuffer(data, dtype=INDEX_DTYPE).astype(np.int64)
    if idx.size != chunk.count or idx.min() < 0:
        raise StoreError(f"chunk file {file} holds negative sample indices or changed while being read")
    return idx


@contextmanager
def open_regular(file: Path) -> Iterator:
    """Open `file` for reading without blocking (a FIFO would wait for a writer forever), refusing anything but
    a regular file (a FIFO, a device such as /dev/zero, a folder)."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise  # the caller says what is missing
    except OSError as e:
        raise StoreError(f"cannot read {file}: {one_line(e.strerror or e)}") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(f"{file} is not a regular file (a FIFO, device or folder); refusing to read it")
        yield f


def check_size(file: Path, expected: int, status: os.stat_result | None = None) -> None:
    """Refuse a chunk file that is missing, not a regular file, or not `expected` bytes long."""
    try:
        status = status or os.stat(file)
    except FileNotFoundError:
        raise StoreError(f"chunk file {file} is missing") from None
    except OSError as e:
        raise StoreError(f"cannot read chunk file {file}: {one_line(e.strerror or e)}") from None
    if not stat.S_ISREG(status.st_mode):
        raise StoreError(f"chunk file {file} is not a regular file (a FIFO, device or folder); refusing to read it")
    if status.st_size != expected:
        raise StoreError(
            f"chunk file {file} has {status.st_size} bytes instead of {expected} (truncated or overwritten)"
        )


def file_crc32(file: Path, expected_size: int) -> int:
    """CRC-32 of a regular file of `expected_size` bytes, streamed through one reused buffer (zlib's crc32 runs
    at several GB/s)."""
    crc = 0
    try:
        with open_regular(file) as f:
            check_size(file, expected_size, os.fstat(f.fileno()))
            buffer = bytearray(max(1, min(STREAM_BYTES, expected_size)))
            view = memoryview(buffer)
            while n := f.readinto(buffer):
                crc = zlib.crc32(view[:n], crc)
    except FileNotFoundError:
        raise StoreError(f"chunk file {file} is missing") from None
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
