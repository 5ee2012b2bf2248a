"""Helpers of the tests in tests/store/, and the child process of their crash-safety tests.

As a script it appends synthetic batches to a pattern store. Usage:
``python store_helpers.py STORE FIRST_BATCH LAST_BATCH BATCH_SIZE``. Builds every batch first, prints
"ready", then appends them one by one, so the parent can time its SIGKILL to land inside the writes.
"""

import sys
from dataclasses import astuple
from pathlib import Path

import torch
from torch import nn

from skqk import decouple, models
from skqk.gates import MaxPoolGate
from skqk.patterns import Pattern
from skqk.store import PatternStore, SiteSpec
from skqk.store.format import BITS_PER_UNIT


def selector_of(name: str = "lenet5", pooling: str = "frozen"):
    return decouple(models.build(name).eval(), pooling)[0]


def stem_net() -> nn.Module:
    """A ResNet-like stem: 3x3 max pooling, stride 2, padding 1 (switches need 4 bits; windows reach the padding)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 7),
    ).eval()  # fmt: skip


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


def assert_same_pattern(got: Pattern, expected: Pattern, specs: list[SiteSpec]) -> None:
    """`got` (a read of a store with `specs`) is `expected` on every state an estimator reads: bit for bit, except
    that a gate site read only through a pool is compared where the pool's switches select (and reads 0 elsewhere),
    routed as the estimator's own `MaxPoolGate` routes them."""
    assert got.sites == expected.sites and got.bits == expected.bits
    windows = {s.name: s.window for s in specs}
    for spec in specs:
        mine, theirs = got[spec.name], expected[spec.name]
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, spec.name
        if spec.through is None:
            assert torch.equal(mine, theirs), spec.name
            continue
        at = MaxPoolGate(*astuple(windows[spec.through])).switch_positions(theirs, expected[spec.through])
        assert torch.equal(mine.flatten(-2).gather(-1, at), theirs.flatten(-2).gather(-1, at)), spec.name
        assert not mine.flatten(-2).scatter(-1, at, 0).any(), spec.name


def synthetic_batch(sites: list[SiteSpec], batch: int, batch_size: int) -> tuple[torch.Tensor, Pattern]:
    """Batch number `batch`: its sample indices and a random pattern that depends only on `batch`."""
    gen = torch.Generator().manual_seed(batch)
    states = {
        s.name: torch.rand((batch_size, *s.shape), generator=gen) < 0.5
        if s.kind == "gate"
        else torch.randint(0, 3 if s.kind == "piece" else s.window.size, (batch_size, *s.shape), generator=gen).byte()
        for s in sites
    }
    bits = {s.name: BITS_PER_UNIT[s.kind] for s in sites}
    return torch.arange(batch * batch_size, (batch + 1) * batch_size), Pattern(states, bits)


def main(path: str, first: int, last: int, batch_size: int) -> None:
    store = PatternStore.open(path, verify=False)
    batches = [synthetic_batch(store.site_specs, b, batch_size) for b in range(first, last + 1)]
    print("ready", flush=True)
    for indices, pattern in batches:
        store.append(indices, pattern)


if __name__ == "__main__":
    main(sys.argv[1], *map(int, sys.argv[2:]))
