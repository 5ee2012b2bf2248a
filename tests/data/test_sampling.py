"""Nested subsets, reproducible epoch orders, and batches that carry their sample indices."""

import pytest
import torch

from skqk.data import DataError, Dataset, ImageData, batches, epoch_order, subset_fingerprint, subset_indices
from skqk.data.sampling import replay_indices

# 50 samples of class 0, 30 of class 1, 20 of class 2, shuffled
LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=torch.Generator().manual_seed(5))]


@pytest.mark.parametrize("balanced", [False, True])
def test_subsets_of_one_seed_are_nested_and_reproducible(balanced):
    full = subset_indices(LABELS, 100, seed=3, balanced=balanced)

    assert sorted(full.tolist()) == list(range(100))
    assert full.dtype == torch.int64
    for n in (1, 2, 7, 33, 99):
        assert torch.equal(subset_indices(LABELS, n, seed=3, balanced=balanced), full[:n])
    assert not torch.equal(subset_indices(LABELS, 100, seed=4, balanced=balanced), full)


def test_balanced_prefixes_are_as_balanced_as_the_class_sizes_allow():
    order = subset_indices(LABELS, 100, seed=0, balanced=True)

    for n in range(1, 101):
        counts = torch.bincount(LABELS[order[:n]], minlength=3).tolist()
        # water-filling: the level each class is filled to, capped by its size (50, 30, 20)
        level = next(level for level in range(51) if sum(min(level, size) for size in (50, 30, 20)) >= n)
        assert all(min(level - 1, size) <= count <= min(level, size) for count, size in zip(counts, (50, 30, 20)))


def test_subset_fingerprint_names_the_permutation_of_all_nested_subsets():
    fingerprints = [
        subset_fingerprint(LABELS, seed, balanced) for seed, balanced in [(0, False), (1, False), (0, True)]
    ]

    assert len(set(fingerprints)) == 3
    assert subset_fingerprint(LABELS.clone(), 0, False) == fingerprints[0]
    assert subset_fingerprint(LABELS[:-1], 0, False) != fingerprints[0]  # another split, other subsets


def test_subset_size_out_of_range_raises_one_line_error():
    for n in (0, -1, 101):
        with pytest.raises(DataError, match=rf"cannot take a subset of {n} samples: the split has 100$"):
            subset_indices(LABELS, n)


def test_epoch_order_depends_on_seed_and_epoch_only():
    indices = subset_indices(LABELS, 40, seed=1)

    order = epoch_order(indices, seed=7, epoch=2)

    assert torch.equal(order, epoch_order(indices.clone(), seed=7, epoch=2))
    assert sorted(order.tolist()) == sorted(indices.tolist())
    others = [epoch_order(indices, seed=7, epoch=3), epoch_order(indices, seed=8, epoch=2)]
    assert all(not torch.equal(order, other) for other in others)
    assert not torch.equal(epoch_order(indices, seed=0, epoch=1), epoch_order(indices, seed=1, epoch=0))


def tiny_dataset(n: int = 10) -> Dataset:
    images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    train = ImageData(images, torch.arange(n) % 3, ["a", "b", "c"])
    return Dataset.from_splits(train, train, "test")


def test_batches_cover_indices_in_order_with_labels_and_normalized_images():
    dataset = tiny_dataset()
    indices = epoch_order(torch.arange(10), seed=0, epoch=0)

    chunks = list(batches(dataset.train, dataset, indices, batch_size=4))

    assert [len(idx) for _, _, idx in chunks] == [4, 4, 2]
    assert torch.equal(torch.cat([idx for _, _, idx in chunks]), indices)
    for x, y, idx in chunks:
        pixels = dataset.train.images[idx].double() / 255
        expected = (pixels - dataset.mean.double().view(-1, 1, 1)) / dataset.std.double().view(-1, 1, 1)
        assert x.dtype == torch.float32 and x.shape == (len(idx), 3, 4, 4)
        torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)
        assert torch.equal(y, idx % 3) and idx.dtype == torch.int64


def test_normalized_training_split_has_zero_mean_and_unit_std():
    dataset = tiny_dataset(50)

    x = dataset.normalize(dataset.train.images)

    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), rtol=0, atol=1e-5)
    torch.testing.assert_close(dataset.normalize(dataset.train.images[0]), x[0])


def test_non_positive_batch_size_raises():
    dataset = tiny_dataset()

    with pytest.raises(DataError, match="batch size must be positive, got 0"):
        next(batches(dataset.train, dataset, torch.arange(10), 0))


def test_inconsistent_tensors_raise_data_error():
    with pytest.raises(DataError, match=r"labels must be int64 \(2,\)"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), ["a"])
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\)"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a"])


def test_batches_of_no_indices_yield_nothing():
    data = ImageData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), ["a"])
    dataset = Dataset.from_splits(data, data, "test")
    assert list(batches(data, dataset, torch.empty(0, dtype=torch.int64), 2)) == []


def test_class_incremental_chunks_each_bring_new_classes_balanced_and_nested():
    labels = torch.arange(300) % 6  # 50 samples per class
    order = subset_indices(labels, 300, seed=2, class_chunks=(2, 30))

    assert sorted(order.tolist()) == list(range(300))
    seen: set[int] = set()
    for k in range(3):
        chunk = labels[order[k * 30 : (k + 1) * 30]]
        classes = set(chunk.tolist())
        assert len(classes) == 2 and not classes & seen  # two classes, new ones
        assert torch.bincount(chunk, minlength=6).max().item() == 15  # balanced between them
        seen |= classes
    assert torch.equal(subset_indices(labels, 70, seed=2, class_chunks=(2, 30)), order[:70])
    assert not torch.equal(subset_indices(labels, 300, seed=3, class_chunks=(2, 30)), order)


def test_class_incremental_chunk_larger_than_its_classes_is_refused():
    with pytest.raises(DataError, match="fewer than a chunk of 101"):
        subset_indices(torch.arange(300) % 6, 10, class_chunks=(2, 101))


def test_class_incremental_chunks_of_more_classes_than_the_data_has_are_refused():
    with pytest.raises(DataError, match="chunks of 7 new classes: the data has 6"):
        subset_indices(torch.arange(300) % 6, 10, class_chunks=(7, 30))


def test_replay_buffer_is_a_reproducible_class_balanced_subset_of_earlier_samples():
    earlier = subset_indices(LABELS, 60, seed=1)

    buffer = replay_indices(LABELS, earlier, 12, seed=4)

    assert len(buffer) == 12 and set(buffer.tolist()) <= set(earlier.tolist()) and len(set(buffer.tolist())) == 12
    assert torch.bincount(LABELS[buffer], minlength=3).tolist() == [4, 4, 4]
    assert torch.equal(replay_indices(LABELS, earlier, 12, seed=4), buffer)
    assert not torch.equal(replay_indices(LABELS, earlier, 12, seed=5), buffer)
    assert len(replay_indices(LABELS, earlier, 0)) == 0
    with pytest.raises(DataError, match="cannot replay 61 samples: only 60"):
        replay_indices(LABELS, earlier, 61)
