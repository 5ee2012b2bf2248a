"""Chunks of a stream and the test samples that measure each of them."""

import torch

from skqk.data import subset_indices
from skqk.incremental import chunk_indices, experience_eval_indices

TRAIN = torch.arange(600) % 6
TEST = torch.arange(120) % 6


def test_chunks_are_consecutive_ranges_of_one_permutation():
    order = subset_indices(TRAIN, 200, seed=1, class_chunks=(2, 40))

    chunks = [chunk_indices(TRAIN, k, 40, seed=1, class_chunks=(2, 40)) for k in range(3)]

    assert torch.equal(torch.cat(chunks), order[:120])
    assert torch.equal(chunk_indices(TRAIN, 1, 50, seed=1), subset_indices(TRAIN, 100, seed=1)[50:])


def test_class_incremental_chunks_are_measured_on_their_own_classes():
    chunks = [chunk_indices(TRAIN, k, 40, seed=1, class_chunks=(2, 40)) for k in range(3)]
    classes = [TRAIN[c].unique() for c in chunks]

    sets = experience_eval_indices(TEST, classes, 3, per_chunk=30)

    for eval_set, chunk_classes in zip(sets, classes):
        assert set(TEST[eval_set].tolist()) == set(chunk_classes.tolist())
        assert len(eval_set) == 30 and torch.bincount(TEST[eval_set]).max().item() == 15


def test_random_order_chunks_get_disjoint_balanced_held_out_samples():
    sets = experience_eval_indices(TEST, None, 4, per_chunk=24, seed=3)

    assert [len(s) for s in sets] == [24] * 4
    assert len(set(torch.cat(sets).tolist())) == 96
    assert all(torch.bincount(TEST[s], minlength=6).tolist() == [4] * 6 for s in sets)
