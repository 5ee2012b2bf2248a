"""A store is data: FIFOs, devices, forged records and malformed manifests end in one line, never a hang, a
traceback, an exhausted memory or a silently wrong number."""

import json
import os
import random
import resource
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from store_helpers import recorded, selector_of, stem_net

import skqk.store.format as store_format
from skqk import decouple
from skqk.store import MANIFEST, PatternStore, StoreError

SRC = str(Path(__file__).parents[2] / "src")


def skqk_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`skqk ARGS` in a child with 6 GB of address space at most, so a read without end fails instead of
    filling the machine, and a time limit, so a hang fails the test instead of stalling the suite."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    env = dict(os.environ, PYTHONPATH=SRC)
    command = [sys.executable, "-m", "skqk.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=limit_memory)


def assert_one_line_refusal(result: subprocess.CompletedProcess, match: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skqk: error:") and match in lines[0], result.stderr


# -- files that are not what they claim --------------------------------------------------------------------------
def replace_with_fifo(file: Path) -> None:
    file.unlink()
    os.mkfifo(file)


def replace_with_dev_zero(file: Path) -> None:
    file.unlink()
    file.symlink_to("/dev/zero")


@pytest.mark.parametrize("replace", [replace_with_fifo, replace_with_dev_zero], ids=["fifo", "dev-zero"])
@pytest.mark.parametrize("which", [MANIFEST, "*.indices", "*.records"])
def test_patterns_info_refuses_a_store_file_that_is_a_fifo_or_a_device(tmp_path, replace, which):
    store, _, _ = recorded(tmp_path, selector_of())
    replace(sorted(store.path.glob(which))[0])
    assert_one_line_refusal(skqk_cli("patterns", "info", str(store.path)), "not a regular file")


def test_a_manifest_larger_than_any_store_needs_is_refused_before_it_is_read(tmp_path, monkeypatch):
    store, _, _ = recorded(tmp_path, selector_of())
    monkeypatch.setattr(store_format, "MAX_MANIFEST_BYTES", 1000)
    with pytest.raises(StoreError, match="more than a manifest can hold"):
        PatternStore.open(store.path)


# -- forged records (the CRC is recomputed: it detects corruption, not forgery) --------------------------------
def forge_record_byte(store: PatternStore, offset: int, value: int) -> None:
    """Set byte `offset` of the first record and recompute the chunk's CRC, as a forger would."""
    records = sorted(store.path.glob("*.records"))[0]
    data = bytearray(records.read_bytes())
    data[offset] = value
    records.write_bytes(bytes(data))
    doc = json.loads((store.path / MANIFEST).read_text())
    chunk = next(c for c in doc["chunks"] if records.name.startswith(c["name"]))
    chunk["records_crc32"] = zlib.crc32(bytes(data))
    (store.path / MANIFEST).write_text(json.dumps(doc))


def switch_byte(store: PatternStore, site: str) -> int:
    offsets = store_format.site_offsets(tuple(store.site_specs))
    return offsets[store.sites.index(site)]


def test_a_forged_switch_outside_its_window_is_refused_on_read(tmp_path):
    """A 3x3 window has 9 offsets, 4 bits hold 16: the offsets 9..15 point outside it."""
    selector = decouple(stem_net(), "frozen")[0]
    pattern = selector(torch.randn(4, 3, 8, 8))
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(4), pattern)
    forge_record_byte(store, switch_byte(store, "2"), 0xFF)  # two switches of 15
    reopened = PatternStore.open(store.path, selector)  # the CRC matches
    with pytest.raises(StoreError, match="outside its 3x3 pooling window"):
        reopened.read(torch.arange(4))


def test_a_forged_switch_into_the_padding_is_refused_on_read(tmp_path):
    """Output (0, 0) of a 3x3/2 pooling with padding 1: its window offsets 0, 1, 2, 3 and 6 lie in the padding,
    which max pooling never selects; its ReLU states are kept at the selected element, so this would index outside
    the input."""
    selector = decouple(stem_net(), "frozen")[0]
    pattern = selector(torch.randn(4, 3, 8, 8))
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(4), pattern)
    forge_record_byte(store, switch_byte(store, "2"), 0)  # outputs 0 and 1: offset 0, the padding's corner
    with pytest.raises(StoreError, match="outside the input"):
        PatternStore.open(store.path, selector).read(torch.arange(4))


# -- malformed manifests -----------------------------------------------------------------------------------------
def edited(path: Path, edit) -> None:
    doc = json.loads((path / MANIFEST).read_text())
    edit(doc)
    (path / MANIFEST).write_text(json.dumps(doc))


def site(doc, k=0):
    return doc["sites"][k]


def chunk(doc, k=0):
    return doc["chunks"][k]


MALFORMED = {
    "count as text": lambda d: chunk(d).update(count="7"),
    "count as float": lambda d: chunk(d).update(count=7.0),
    "count as bool": lambda d: chunk(d).update(count=True),
    "negative count": lambda d: chunk(d).update(count=-7),
    "huge count": lambda d: chunk(d).update(count=10**30),
    "negative crc": lambda d: chunk(d).update(records_crc32=-1),
    "crc as text": lambda d: chunk(d).update(indices_crc32="0"),
    "chunk listed twice": lambda d: d["chunks"].append(dict(chunk(d))),
    "chunk not an object": lambda d: d["chunks"].append([1, 2]),
    "chunks not a list": lambda d: d.update(chunks={"a": 1}),
    "chunks missing": lambda d: d.pop("chunks"),
    "sites missing": lambda d: d.pop("sites"),
    "fingerprint missing": lambda d: d.pop("fingerprint"),
    "pooling missing": lambda d: d.pop("pooling"),
    "fingerprint a number": lambda d: d.update(fingerprint=5),
    "data a number": lambda d: d.update(data=5),
    "version as text": lambda d: d.update(version="2"),
    "version as float": lambda d: d.update(version=2.0),
    "record_bytes as text": lambda d: d.update(record_bytes=str(d["record_bytes"])),
    "huge record_bytes": lambda d: d.update(record_bytes=10**40),
    "site name a number": lambda d: site(d).update(name=1),
    "site kind a list": lambda d: site(d).update(kind=["gate"]),
    "unknown kind": lambda d: site(d).update(kind="float32"),
    "shape of floats": lambda d: site(d).update(shape=[6.0, 28.0, 28.0]),
    "shape of bools": lambda d: site(d).update(shape=[True, True]),
    "negative shape": lambda d: site(d).update(shape=[-6, 28, 28]),
    "huge shape": lambda d: site(d).update(shape=[10**12, 10**12, 10**12]),
    "site not an object": lambda d: d["sites"].append("gate"),
    "window missing": lambda d: site(d, 1).pop("window"),
    "window on a gate": lambda d: site(d).update(window=site(d, 1)["window"]),
    "zero kernel": lambda d: site(d, 1)["window"].update(kernel_size=[0, 2]),
    "kernel of three": lambda d: site(d, 1)["window"].update(kernel_size=[2, 2, 2]),
    "huge kernel": lambda d: site(d, 1)["window"].update(kernel_size=[100, 100]),
    "read through nothing": lambda d: site(d).update(read_through="nowhere"),
    "read through a gate": lambda d: site(d).update(read_through=site(d, 3)["name"]),
    "read through itself": lambda d: site(d).update(read_through=site(d)["name"]),
    "deeply nested": lambda d: d.update(data=json.loads("[" * 100 + "]" * 100)),
}


@pytest.mark.parametrize("damage", list(MALFORMED))
def test_a_malformed_manifest_is_refused_in_one_line(tmp_path, damage):
    store, _, _ = recorded(tmp_path, selector_of())
    edited(store.path, MALFORMED[damage])
    with pytest.raises(StoreError) as error:
        PatternStore.open(store.path)
    assert "\n" not in str(error.value) and len(str(error.value)) < 600


def test_json_nested_beyond_the_parser_is_refused_in_one_line(tmp_path):
    store, _, _ = recorded(tmp_path, selector_of())
    nested = "[" * 100_000 + "]" * 100_000
    (store.path / MANIFEST).write_text('{"format": "skqk-pattern-store", "data": ' + nested + "}")
    with pytest.raises(StoreError, match="not valid JSON"):
        PatternStore.open(store.path)


def test_a_manifest_that_lists_a_site_twice_is_refused(tmp_path):
    """The second entry has the size of the site it replaces, so every file size still agrees: before, the store
    opened and `patterns info` counted one site's active bits twice (over 100% active)."""
    store, _, _ = recorded(tmp_path, selector_of("lenet5", "live"))

    def twice(doc):
        doc["sites"][1]["name"] = doc["sites"][0]["name"]

    edited(store.path, twice)
    with pytest.raises(StoreError, match="listed twice"):
        PatternStore.open(store.path)


def test_random_damage_to_the_manifest_ends_in_a_store_error_or_a_valid_store(tmp_path):
    """Single-character edits of the manifest text: open, info and read either work or raise StoreError."""
    store, indices, _ = recorded(tmp_path, selector_of())
    text = (store.path / MANIFEST).read_text()
    rng = random.Random(0)
    outcomes = {"refused": 0, "opened": 0}
    for _ in range(300):
        at = rng.randrange(len(text))
        (store.path / MANIFEST).write_text(text[:at] + rng.choice('0123456789-.,:[]{}"etaf n') + text[at + 1 :])
        try:
            opened = PatternStore.open(store.path)
            opened.info()
            opened.read(opened.indices[:3])
            outcomes["opened"] += 1
        except StoreError as error:
            assert "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100


def test_random_damage_to_the_records_with_recomputed_crcs_never_breaks_a_read(tmp_path):
    """Forged bytes anywhere in the records of a store with 4-bit switches: a read returns a pattern or refuses."""
    selector = decouple(stem_net(), "frozen")[0]
    pattern = selector(torch.randn(4, 3, 8, 8))
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(4), pattern)
    rng = random.Random(1)
    for _ in range(100):
        forge_record_byte(store, rng.randrange(store.bytes_per_sample), rng.randrange(256))
        try:
            PatternStore.open(store.path, selector).read(torch.arange(4))
        except StoreError as error:
            assert "\n" not in str(error)


def test_huge_sample_indices_cost_no_memory(tmp_path):
    """The index of held samples is sparse: an index near 2**62 (before: an array of that many rows) is just held."""
    selector = selector_of("lenet5", "live")
    pattern = selector(torch.randn(2, 3, 32, 32))
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    huge = torch.tensor([3, 2**62])
    store.append(huge, pattern)
    reopened = PatternStore.open(store.path, selector)
    assert reopened.read(huge.flip(0)) == pattern[[1, 0]] and huge[1] in reopened and 4 not in reopened
    assert torch.equal(reopened.indices, huge)


def test_negative_indices_in_an_index_file_with_a_valid_crc_are_refused(tmp_path):
    store, _, _ = recorded(tmp_path, selector_of())
    indices = sorted(store.path.glob("*.indices"))[0]
    forged = np.full(len(indices.read_bytes()) // 8, -5, dtype="<i8").tobytes()
    indices.write_bytes(forged)
    edited(store.path, lambda d: next(c for c in d["chunks"] if indices.name.startswith(c["name"])).update(
        indices_crc32=zlib.crc32(forged)))  # fmt: skip
    with pytest.raises(StoreError, match="negative sample indices"):
        PatternStore.open(store.path)
