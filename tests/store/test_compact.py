"""Format version 2 stores only what an estimator reads: switches in ceil(log2(window)) bits, a gate that only a
frozen max-pool reads at the elements its switches select. The estimator gets the same outputs and gradients, and
version 1 stores are still read (and appended to) in their own layout."""

import json
import zlib

import numpy as np
import pytest
import torch
from store_helpers import assert_same_pattern, recorded, selector_of, stem_net

from skqk import decouple, models
from skqk.estimator import build_estimator
from skqk.store import MANIFEST, PatternStore, StoreError


def outputs_and_gradients(estimator, x, pattern):
    x = x.clone().requires_grad_(True)
    out = estimator(x, pattern)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype))
    return out.detach(), x.grad, [p.grad.clone() for p in estimator.parameters()]


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("name", [*(m for m in models.list_models() if m != "mlp"), "stem"])  # mlp: no pooling
def test_the_estimator_gets_the_same_outputs_and_gradients_from_the_compact_store(tmp_path, name, fuse):
    model = stem_net() if name == "stem" else models.build(name).eval()
    model = model.double()
    selector = decouple(model, "frozen")[0]
    x = torch.randn(6, 3, *((8, 8) if name == "stem" else (32, 32)), dtype=torch.float64)
    pattern = selector(x)
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(6), pattern)
    assert selector.read_through, "every zoo net has a ReLU right before a max pooling"
    read = PatternStore.open(store.path, selector).read(torch.arange(6))
    assert_same_pattern(read, pattern, store.site_specs)
    estimator = build_estimator(model, "frozen", fuse=fuse)
    expected = outputs_and_gradients(estimator, x, pattern)
    estimator.zero_grad()
    got = outputs_and_gradients(estimator, x, read)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], expected[2]))


def test_a_3x3_padded_pool_stores_4_bit_switches_and_the_relu_at_its_outputs(tmp_path):
    selector = decouple(stem_net(), "frozen")[0]
    assert selector.read_through == {"1": "2"} and selector.windows["2"].switch_bits == 4
    pattern = selector(torch.randn(5, 3, 8, 8))
    assert int(pattern["2"].max()) > 3  # switches beyond 2 bits occur
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(5), pattern)
    relu_at_pool, switches, relu = 4 * 4 * 4, 4 * 4 * 4 * 4, 5 * 2 * 2  # bits: pooled 4x4x4, 4 bits each, 5x2x2
    assert store.bytes_per_sample == relu_at_pool // 8 + switches // 8 + -(-relu // 8)
    assert store.format_version == 2
    assert_same_pattern(PatternStore.open(store.path, selector).read(torch.arange(5)), pattern, store.site_specs)


def test_lenet5_frozen_needs_a_quarter_of_the_version_1_bytes(tmp_path):
    store, _, _ = recorded(tmp_path, selector_of("lenet5", "frozen"))
    version_1 = (6 * 28 * 28 + 16 * 10 * 10) // 8 + 15 + 11 + 6 * 14 * 14 + 16 * 5 * 5  # every bit, a byte a switch
    assert store.bytes_per_sample == (6 * 14 * 14 + 16 * 5 * 5) // 8 + 15 + 11 + (6 * 14 * 14 + 16 * 5 * 5) // 4
    assert store.bytes_per_sample < version_1 / 3.8


def test_a_live_store_has_no_switches_and_keeps_every_gate_state(tmp_path):
    selector = selector_of("lenet5", "live")
    store, indices, pattern = recorded(tmp_path, selector)
    assert selector.read_through == {} and all(s.through is None for s in store.site_specs)
    assert store.read(indices) == pattern


# -- version 1 stores ------------------------------------------------------------------------------------------
def write_version_1_store(path, selector, pattern, indices) -> None:
    """A store as skqk wrote it before version 2, written independently of skqk's encoder: every gate state,
    bits packed little-endian, 2 bits per three-piece state, a byte per switch."""
    parts, sites = [], []
    for name, states in pattern.items():
        flat = states.reshape(len(states), -1).numpy().astype(np.uint8)
        kind = "gate" if states.dtype == torch.bool else ("piece" if pattern.bits[name] == 2 else "switch")
        if kind == "gate":
            parts.append(np.packbits(flat, axis=1, bitorder="little"))
        elif kind == "switch":
            parts.append(flat)
        else:
            padded = np.zeros((len(flat), -(-flat.shape[1] // 4) * 4), dtype=np.uint8)
            padded[:, : flat.shape[1]] = flat
            q = padded.reshape(len(flat), -1, 4)
            parts.append(q[..., 0] | q[..., 1] << 2 | q[..., 2] << 4 | q[..., 3] << 6)
        sites.append({"name": name, "kind": kind, "shape": list(states.shape[1:])})
    records = np.concatenate(parts, axis=1).tobytes()
    index_bytes = indices.numpy().astype("<i8").tobytes()
    path.mkdir()
    (path / "chunk-1-0123456789abcdef.records").write_bytes(records)
    (path / "chunk-1-0123456789abcdef.indices").write_bytes(index_bytes)
    chunk = {"name": "chunk-1-0123456789abcdef", "count": len(indices), "records_crc32": zlib.crc32(records),
             "indices_crc32": zlib.crc32(index_bytes)}  # fmt: skip
    manifest = {"format": "skqk-pattern-store", "version": 1, "fingerprint": selector.fingerprint,
                "pooling": selector.pooling, "sites": sites, "record_bytes": len(records) // len(indices),
                "chunks": [chunk], "data": None, "subset": None}  # fmt: skip
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("pooling", ["frozen", "live"])
def test_a_version_1_store_is_read_bit_for_bit_and_appended_to_in_its_own_layout(tmp_path, pooling):
    selector = selector_of("lenet5", pooling)
    pattern = selector(torch.randn(8, 3, 32, 32))
    write_version_1_store(tmp_path / "old", selector, pattern[:5], torch.arange(5))
    old = PatternStore.open(tmp_path / "old", selector)
    assert old.format_version == 1 and old.read(torch.arange(5)) == pattern[:5]  # every state, as it was stored
    old.append(torch.arange(5, 8), pattern[5:])
    again = PatternStore.open(tmp_path / "old", selector)
    assert again.read(torch.arange(8)) == pattern and again.format_version == 1
    assert json.loads((tmp_path / "old" / MANIFEST).read_text())["version"] == 1
    assert again.info()["format_version"] == 1


def test_a_version_1_switch_outside_its_window_is_refused_when_the_selector_is_known(tmp_path):
    selector = selector_of("lenet5", "frozen")
    pattern = selector(torch.randn(3, 3, 32, 32))
    states = dict(pattern.items())
    states["features.2"] = states["features.2"].clone()
    states["features.2"][1, 0, 0, 0] = 200  # a byte-wide switch can claim any offset; a 2x2 window has 4
    forged = type(pattern)(states, pattern.bits)
    write_version_1_store(tmp_path / "old", selector, forged, torch.arange(3))
    with pytest.raises(StoreError, match="outside its 2x2 pooling window"):
        PatternStore.open(tmp_path / "old", selector).read(torch.arange(3))
