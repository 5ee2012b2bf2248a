"""What `skqk patterns info` shows: the store's layout, sizes and active fractions, checked independently."""

import json
import re
from dataclasses import astuple

import pytest
import torch
from store_helpers import recorded, selector_of
from torch import nn

import skqk.store.format as store_format
from skqk import decouple
from skqk.gates import MaxPoolGate
from skqk.store import PatternStore, format_info


def kept_at_switches(selector, pattern, site):
    """The states of gate `site` at the elements its pool's switches select, routed as the estimator routes them."""
    pool = selector.read_through[site]
    at = MaxPoolGate(*astuple(selector.windows[pool])).switch_positions(pattern[site], pattern[pool])
    return pattern[site].flatten(-2).gather(-1, at)


def test_info_matches_independent_computation(tmp_path, monkeypatch):
    monkeypatch.setattr(store_format, "STREAM_BYTES", 5000)  # checksums and statistics stream in many blocks
    selector = selector_of()
    store, _, pattern = recorded(tmp_path, selector)
    info = PatternStore.open(store.path, selector).info()
    assert (info["samples"], info["chunks"], info["fingerprint"]) == (12, 2, selector.fingerprint)
    # LeNet-5, frozen pooling: both ReLUs before a 2x2 pool keep a quarter of their states, switches take 2 bits
    assert selector.read_through == {"features.1": "features.2", "features.4": "features.5"}
    kept = {s: pattern[s][0].numel() for s in pattern.gate_sites}
    kept.update({s: pattern[pool][0].numel() for s, pool in selector.read_through.items()})
    bits = {**kept, **{s: 2 * pattern[s][0].numel() for s in pattern.switch_sites}}
    assert info["gate_bits_per_sample"] == sum(kept.values()) == 6 * 14 * 14 + 16 * 5 * 5 + 120 + 84
    assert info["switch_bits_per_sample"] == 2 * pattern.switches_per_sample
    assert info["bytes_per_sample"] == store.bytes_per_sample == sum(-(-b // 8) for b in bits.values())
    assert info["nbytes_on_disk"] == store.nbytes_on_disk == sum(f.stat().st_size for f in store.path.iterdir())
    sites = {s["name"]: s for s in info["sites"]}
    assert list(sites) == selector.sites
    for name, states in pattern.items():
        gate = states.dtype == torch.bool
        assert sites[name]["kind"] == ("gate" if gate else "switch")
        assert sites[name]["shape"] == list(states.shape[1:])
        assert sites[name]["bits_per_sample"] == bits[name]
        assert sites[name]["read_through"] == selector.read_through.get(name)
    active = pattern.active_fraction()
    active.update({s: kept_at_switches(selector, pattern, s).float().mean().item() for s in selector.read_through})
    assert {s: sites[s]["active_fraction"] for s in pattern.gate_sites} == pytest.approx(active, abs=1e-6)
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


def test_three_piece_gates_are_stored_at_two_bits_per_unit(tmp_path):
    """ReLU6 states (0 below, 1 linear, 2 above) pack 4 per byte; info reports bits per kind of site."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].bias.fill_(3.0)  # every piece of the ReLU6 occurs
    selector = decouple(model)[0]
    pattern = selector(4 * torch.randn(9, 3, 8, 8))
    assert set(pattern["1"].unique().tolist()) == {0, 1, 2}
    store = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    store.append(torch.arange(9), pattern)
    assert store.bytes_per_sample == 4 * 6 * 6 * 2 // 8 + (5 * 4 * 4 + 7) // 8
    got = PatternStore.open(store.path, selector).read(torch.arange(9))
    assert got == pattern and got.bits == {"1": 2, "3": 1}
    info = store.info()
    assert info["bits_per_sample_by_kind"] == {"gate": 80, "piece": 288, "switch": 0}
    assert [s["kind"] for s in info["sites"]] == ["piece", "gate"]
    active = {s["name"]: s["active_fraction"] for s in info["sites"]}
    assert active == pytest.approx(pattern.active_fraction(), abs=1e-6)
    assert re.search(r"three-piece gates\s+288 bits \(2 per unit\)", format_info(info))
