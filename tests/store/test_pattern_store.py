"""PatternStore: bit-exact round trips in any order across appends, and refusals that change nothing."""

import pytest
import torch
from store_helpers import assert_same_pattern, recorded, selector_of

from skqk import models
from skqk.store import PatternStore, StoreError


# -- round trip ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["live", "frozen"])
@pytest.mark.parametrize("name", models.list_models())
def test_round_trip_is_bit_exact_in_any_order_across_appends(tmp_path, name, pooling):
    selector = selector_of(name, pooling)
    store, indices, pattern = recorded(tmp_path, selector, appends=(3, 2))
    reopened = PatternStore.open(store.path, selector)
    order = torch.randperm(len(indices))
    assert_same_pattern(reopened.read(indices[order]), pattern[order], store.site_specs)
    assert len(reopened) == len(indices)
    assert torch.equal(reopened.indices, indices.sort().values)


def test_read_allows_repeats_and_empty_requests(tmp_path):
    store, indices, pattern = recorded(tmp_path, selector_of())
    picks = torch.tensor([3, 3, 0, 11])
    assert_same_pattern(store.read(indices[picks]), pattern[picks], store.site_specs)
    empty = store.read(torch.tensor([], dtype=torch.int64))
    assert empty.batch_size == 0 and empty.sites == pattern.sites
    assert indices[0] in store and store.has(indices) and not store.has(torch.tensor([int(indices[0]), 10**6]))


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


# -- several writers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["append", "write_chunk and commit"])
def test_two_store_objects_writing_one_store_keep_each_others_chunks(tmp_path, how):
    """Each object's view is older than the manifest on disk once the other has committed: a commit merges
    with the disk (before, the last writer won and the other's samples were silently dropped)."""
    selector = selector_of()
    pattern = selector(torch.randn(12, 3, 32, 32))
    first = PatternStore.create(tmp_path / "store", selector, pattern[:1])
    second = PatternStore.open(tmp_path / "store", selector)
    halves = [(first, torch.arange(6)), (second, torch.arange(6, 12))]

    for store, idx in halves:
        if how == "append":
            store.append(idx, pattern[idx])
        else:
            store.commit([store.write_chunk(idx, pattern[idx])])

    reopened = PatternStore.open(tmp_path / "store", selector)
    assert len(reopened) == len(second) == 12
    assert_same_pattern(reopened.read(torch.arange(12)), pattern, first.site_specs)
    with pytest.raises(StoreError, match="already held"):  # the merged view also refuses the other's samples
        first.commit([first.write_chunk(torch.tensor([7]), pattern[7:8])])
