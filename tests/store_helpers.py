"""Helpers of the tests in tests/store/, and the child process of their crash-safety tests.

As a script it appends synthetic batches to a pattern store. Usage:
``python store_helpers.py STORE FIRST_BATCH LAST_BATCH BATCH_SIZE``. Builds every batch first, prints
"ready", then appends them one by one, so the parent can time its SIGKILL to land inside the writes.
"""

import sys
from pathlib import Path

import torch

from skqk import decouple, models
from skqk.patterns import Pattern
from skqk.store import PatternStore, SiteSpec
from skqk.store.format import BITS_PER_UNIT


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


def synthetic_batch(sites: list[SiteSpec], batch: int, batch_size: int) -> tuple[torch.Tensor, Pattern]:
    """Batch number `batch`: its sample indices and a random pattern that depends only on `batch`."""
    gen = torch.Generator().manual_seed(batch)
    states = {
        s.name: torch.rand((batch_size, *s.shape), generator=gen) < 0.5
        if s.kind == "gate"
        else torch.randint(0, 3 if s.kind == "piece" else 4, (batch_size, *s.shape), generator=gen, dtype=torch.uint8)
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
