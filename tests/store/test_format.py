"""The on-disk format's safety: damaged stores are refused in one line, killed writes leave the old or the new
store, several writers commit once."""

import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from store_helpers import assert_same_pattern, recorded, selector_of, synthetic_batch

import skqk.store.format as store_format
from skqk.store import MANIFEST, PatternStore, StoreError

WRITER = Path(__file__).parents[1] / "store_helpers.py"
CRASH_BATCH = 1000  # samples per batch the crash tests' child writes: ~2.4 MB per chunk


# -- damaged stores --------------------------------------------------------------------------------------------
def first_file(path: Path, pattern: str) -> Path:
    return sorted(path.glob(pattern))[0]


def edit_manifest(path: Path, edit) -> None:
    doc = json.loads((path / MANIFEST).read_text())
    edit(doc)
    (path / MANIFEST).write_text(json.dumps(doc))


def flip_middle_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x10
    file.write_bytes(bytes(data))


DAMAGES = {
    "truncated records": (lambda p: os.truncate(first_file(p, "*.records"), 100), "truncated"),
    "flipped record byte": (lambda p: flip_middle_byte(first_file(p, "*.records")), "corrupted"),
    "flipped index byte": (lambda p: flip_middle_byte(first_file(p, "*.indices")), "corrupted"),
    "missing chunk file": (lambda p: first_file(p, "*.indices").unlink(), "missing"),
    "missing manifest": (lambda p: (p / MANIFEST).unlink(), "no pattern store"),
    "garbage manifest": (lambda p: (p / MANIFEST).write_bytes(b"\x00\xff\x13garbage{"), "not valid JSON"),
    "cut manifest": (lambda p: (p / MANIFEST).write_text((p / MANIFEST).read_text()[:200]), "not valid JSON"),
    "foreign json": (lambda p: (p / MANIFEST).write_text('{"hello": 1}'), "not a skqk pattern store"),
    "future version": (lambda p: edit_manifest(p, lambda d: d.update(version=99)), "format version 99"),
    "bad shape": (lambda p: edit_manifest(p, lambda d: d["sites"][0].update(shape="x")), "malformed"),
    "bad chunk name": (lambda p: edit_manifest(p, lambda d: d["chunks"][0].update(name="../x")), "malformed"),
    "lost field": (lambda p: edit_manifest(p, lambda d: d.pop("record_bytes")), "malformed"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_store_is_refused_on_open_with_a_one_line_error(tmp_path, damage):
    store, _, _ = recorded(tmp_path, selector_of())
    do_damage, match = DAMAGES[damage]
    do_damage(store.path)
    with pytest.raises(StoreError, match=match) as error:
        PatternStore.open(store.path)
    assert "\n" not in str(error.value)


def test_open_without_verify_skips_checksums_but_not_sizes(tmp_path):
    store, _, _ = recorded(tmp_path, selector_of())
    flip_middle_byte(first_file(store.path, "*.records"))
    assert len(PatternStore.open(store.path, verify=False)) == 12
    os.truncate(first_file(store.path, "*.records"), 100)
    with pytest.raises(StoreError, match="truncated"):
        PatternStore.open(store.path, verify=False)


# -- several writers -------------------------------------------------------------------------------------------
def test_chunks_of_several_writers_join_the_store_in_one_commit(tmp_path):
    selector = selector_of()
    pattern = selector(torch.randn(9, 3, 32, 32))
    owner = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    writers = [PatternStore.open(owner.path, selector) for _ in range(3)]  # one per rank
    chunks = [w.write_chunk(torch.arange(rank, 9, 3), pattern[rank::3]) for rank, w in enumerate(writers)]
    assert len(PatternStore.open(owner.path)) == 0  # written, not committed
    owner.commit(pickle.loads(pickle.dumps(chunks)))  # as gathered from the ranks
    assert len(owner) == 9
    assert_same_pattern(PatternStore.open(owner.path, selector).read(torch.arange(9)), pattern, owner.site_specs)


def test_a_commit_with_overlapping_chunks_changes_nothing(tmp_path):
    selector = selector_of()
    pattern = selector(torch.randn(4, 3, 32, 32))
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    chunks = [
        store.write_chunk(torch.tensor([0, 1]), pattern[:2]),
        store.write_chunk(torch.tensor([1, 2]), pattern[2:]),
    ]
    with pytest.raises(StoreError, match="given twice"):
        store.commit(chunks)
    assert len(store) == len(PatternStore.open(store.path)) == 0
    store.commit(chunks[:1])
    assert_same_pattern(store.read(torch.tensor([1, 0])), pattern[[1, 0]], store.site_specs)


# -- crash safety with real processes --------------------------------------------------------------------------
def store_with_one_batch(tmp_path: Path):
    """A lenet5 (frozen pooling) store holding synthetic batch 0."""
    selector = selector_of()
    store = PatternStore.create(tmp_path / "store", selector, selector(torch.randn(1, 3, 32, 32)))
    store.append(*synthetic_batch(store.site_specs, 0, CRASH_BATCH))
    return store.path, store.site_specs


def start_writer(path: Path, first: int, last: int, crash_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({store_format.CRASH_ENV: crash_at} if crash_at else {}))
    args = [sys.executable, str(WRITER), str(path), str(first), str(last), str(CRASH_BATCH)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, env=env)


def held_batches(path: Path, sites) -> int:
    """How many synthetic batches the store holds, checking it holds exactly batches 0..k-1, bit for bit."""
    store = PatternStore.open(path)
    batches, rest = divmod(len(store), CRASH_BATCH)
    assert rest == 0 and torch.equal(store.indices, torch.arange(len(store)))
    for batch in range(batches):
        indices, pattern = synthetic_batch(sites, batch, CRASH_BATCH)
        assert_same_pattern(store.read(indices), pattern, sites)
    return batches


def stray_files(path: Path) -> list[str]:
    committed = {c["name"] for c in json.loads((path / MANIFEST).read_text())["chunks"]}
    return sorted(f.name for f in path.iterdir() if f.name != MANIFEST and f.name.split(".")[0] not in committed)


def kill(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    child.stdout.close()


@pytest.mark.parametrize("step", ["chunk-written", "manifest-written"])
def test_a_write_killed_before_the_manifest_is_replaced_leaves_the_old_store(tmp_path, step):
    path, sites = store_with_one_batch(tmp_path)
    child = start_writer(path, 1, 1, crash_at=step)
    assert child.wait(timeout=120) == -signal.SIGKILL
    child.stdout.close()
    assert held_batches(path, sites) == 1
    assert stray_files(path)  # the killed write's leftovers, ignored by open
    PatternStore.open(path).append(*synthetic_batch(sites, 1, CRASH_BATCH))
    assert held_batches(path, sites) == 2
    assert stray_files(path) == []


@pytest.mark.parametrize("seed", range(3))
def test_a_write_killed_at_a_random_moment_leaves_the_old_or_the_new_content(tmp_path, seed):
    path, sites = store_with_one_batch(tmp_path)
    child = start_writer(path, 1, 4)
    assert child.stdout.readline() == b"ready\n"
    time.sleep(random.Random(seed).uniform(0.0, 0.08))
    kill(child)
    batches = held_batches(path, sites)
    assert 1 <= batches <= 5
    PatternStore.open(path).append(*synthetic_batch(sites, batches, CRASH_BATCH))
    assert held_batches(path, sites) == batches + 1
    assert stray_files(path) == []
