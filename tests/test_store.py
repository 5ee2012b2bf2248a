import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from store_writer import synthetic_batch

import skqk.store as store_module
from skqk import decouple, models
from skqk.store import MANIFEST, PatternStore, StoreError, format_info

WRITER = Path(__file__).with_name("store_writer.py")
CRASH_BATCH = 1000  # samples per batch the crash tests' child writes: ~2.4 MB per chunk


def selector_of(name: str = "lenet5", pooling: str = "frozen"):
    return decouple(models.build(name).eval(), pooling)[0]


def recorded(tmp_path: Path, selector, appends=(7, 5)):
    """A store holding a random pattern of sum(appends) samples at random sample indices, in several appends."""
    n = sum(appends)
    pattern = selector(torch.randn(n, 3, 32, 32))
    indices = torch.randperm(10 * n)[:n]
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    start = 0
    for size in appends:
        store.append(indices[start : start + size], pattern[start : start + size])
        start += size
    return store, indices, pattern


def assert_same_pattern(got, expected):
    assert got == expected
    assert all(got[s].dtype == expected[s].dtype for s in expected)


# -- round trip ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["live", "frozen"])
@pytest.mark.parametrize("name", models.list_models())
def test_round_trip_is_bit_exact_in_any_order_across_appends(tmp_path, name, pooling):
    selector = selector_of(name, pooling)
    store, indices, pattern = recorded(tmp_path, selector, appends=(3, 2))
    reopened = PatternStore.open(store.path, selector)
    order = torch.randperm(len(indices))
    assert_same_pattern(reopened.read(indices[order]), pattern[order])
    assert len(reopened) == len(indices)
    assert torch.equal(reopened.indices, indices.sort().values)


def test_read_allows_repeats_and_empty_requests(tmp_path):
    store, indices, pattern = recorded(tmp_path, selector_of())
    picks = torch.tensor([3, 3, 0, 11])
    assert_same_pattern(store.read(indices[picks]), pattern[picks])
    empty = store.read(torch.tensor([], dtype=torch.int64))
    assert empty.batch_size == 0 and empty.sites == pattern.sites
    assert indices[0] in store and store.has(indices) and not store.has(torch.tensor([int(indices[0]), 10**6]))


def test_info_matches_independent_computation(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "_STREAM_BYTES", 5000)  # checksums and statistics stream in many blocks
    selector = selector_of()
    store, _, pattern = recorded(tmp_path, selector)
    info = PatternStore.open(store.path, selector).info()
    assert (info["samples"], info["chunks"], info["fingerprint"]) == (12, 2, selector.fingerprint)
    assert info["gate_bits_per_sample"] == pattern.gate_bits_per_sample
    assert info["switch_bytes_per_sample"] == pattern.switches_per_sample
    packed_bytes = sum((pattern[s][0].numel() + 7) // 8 for s in pattern.gate_sites)
    assert info["bytes_per_sample"] == store.bytes_per_sample == packed_bytes + pattern.switches_per_sample
    assert info["nbytes_on_disk"] == store.nbytes_on_disk == sum(f.stat().st_size for f in store.path.iterdir())
    sites = {s["name"]: s for s in info["sites"]}
    assert list(sites) == selector.sites
    for name, states in pattern.items():
        gate = states.dtype == torch.bool
        assert sites[name]["kind"] == ("gate" if gate else "switch")
        assert sites[name]["shape"] == list(states.shape[1:])
        assert sites[name]["bits_per_sample"] == states[0].numel() * (1 if gate else 8)
    active = {s: sites[s]["active_fraction"] for s in pattern.gate_sites}
    assert active == pytest.approx(pattern.active_fraction(), abs=1e-6)
    assert all(sites[s]["active_fraction"] is None for s in pattern.switch_sites)
    json.dumps(info)


def test_format_info_lists_sites_and_sample_count(tmp_path):
    selector = selector_of()
    store, _, _ = recorded(tmp_path, selector)
    text = format_info(store.info())
    assert re.search(r"samples\s+12 ", text)
    assert all(re.search(rf"^{re.escape(site)}\s", text, re.MULTILINE) for site in selector.sites)
    empty = PatternStore.create(tmp_path / "empty", selector, selector(torch.randn(1, 3, 32, 32)))
    assert re.search(r"samples\s+0 ", format_info(empty.info()))


# -- refusals --------------------------------------------------------------------------------------------------
def test_open_with_another_selector_is_refused(tmp_path):
    store, _, _ = recorded(tmp_path, selector_of())
    with pytest.raises(StoreError, match="recorded by another selector"):
        PatternStore.open(store.path, selector_of())  # same architecture, other weights


def test_create_refuses_to_overwrite_a_store(tmp_path):
    selector = selector_of()
    store, _, pattern = recorded(tmp_path, selector)
    with pytest.raises(StoreError, match="refusing to overwrite"):
        PatternStore.create(store.path, selector, pattern)


@pytest.mark.parametrize(
    "indices, match",
    [
        ([0, 0], "given twice"),
        ("held", "already held"),
        ([0.0, 1.0], "integer"),
        ([-1, 0], "non-negative"),
    ],
)
def test_bad_indices_are_refused_and_leave_the_store_unchanged(tmp_path, indices, match):
    store, held, pattern = recorded(tmp_path, selector_of())
    files = sorted(store.path.iterdir())
    bad = held[:2] if indices == "held" else torch.tensor(indices)
    with pytest.raises(StoreError, match=match):
        store.append(bad, pattern[:2])
    assert len(store) == len(PatternStore.open(store.path)) == 12
    assert sorted(store.path.iterdir()) == files


def test_a_pattern_of_another_layout_is_refused(tmp_path):
    store, _, pattern = recorded(tmp_path, selector_of())
    with pytest.raises(StoreError, match="sites"):
        store.append(torch.tensor([1000]), selector_of(pooling="live")(torch.randn(1, 3, 32, 32)))
    with pytest.raises(StoreError, match="shape"):
        store.append(torch.tensor([1000, 1001]), pattern[:1])


def test_reading_missing_samples_says_how_many(tmp_path):
    store, indices, _ = recorded(tmp_path, selector_of())
    with pytest.raises(StoreError, match="2 of the 3 requested samples are missing"):
        store.read(torch.tensor([int(indices[0]), 999, 10**6]))


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
    assert_same_pattern(PatternStore.open(owner.path, selector).read(torch.arange(9)), pattern)


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
    assert_same_pattern(store.read(torch.tensor([1, 0])), pattern[[1, 0]])


# -- crash safety with real processes --------------------------------------------------------------------------
def store_with_one_batch(tmp_path: Path):
    """A lenet5 (frozen pooling) store holding synthetic batch 0."""
    selector = selector_of()
    store = PatternStore.create(tmp_path / "store", selector, selector(torch.randn(1, 3, 32, 32)))
    store.append(*synthetic_batch(store.site_specs, 0, CRASH_BATCH))
    return store.path, store.site_specs


def start_writer(path: Path, first: int, last: int, crash_at: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, **({store_module._CRASH_ENV: crash_at} if crash_at else {}))
    args = [sys.executable, str(WRITER), str(path), str(first), str(last), str(CRASH_BATCH)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, env=env)


def held_batches(path: Path, sites) -> int:
    """How many synthetic batches the store holds, checking it holds exactly batches 0..k-1, bit for bit."""
    store = PatternStore.open(path)
    batches, rest = divmod(len(store), CRASH_BATCH)
    assert rest == 0 and torch.equal(store.indices, torch.arange(len(store)))
    for batch in range(batches):
        indices, pattern = synthetic_batch(sites, batch, CRASH_BATCH)
        assert_same_pattern(store.read(indices), pattern)
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
