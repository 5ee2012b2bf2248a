"""The real CIFAR-10 from $SKQK_DATA: skipped where it is not set, except in CI, which must provide it."""

import os

import pytest
import torch

import skqk.data.loading
from skqk.data import load_dataset

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def cifar10_dir() -> str:
    path = os.environ.get("SKQK_DATA")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must set SKQK_DATA to CIFAR-10 (e.g. shared/data/cifar10-jpeg.tar.gz)")
        pytest.skip("SKQK_DATA is not set; e.g. SKQK_DATA=/work/shared/data/cifar10-jpeg.tar.gz")
    return path


@pytest.mark.slow
def test_real_cifar10_loads_complete_and_then_from_the_cache(cifar10_dir, tmp_path, monkeypatch):
    cache_dir = os.environ.get("SKQK_CACHE") or tmp_path

    dataset = load_dataset(cifar10_dir, cache_dir=cache_dir, download=False, progress=False)
    monkeypatch.setattr(skqk.data.loading, "read_source", lambda *args: pytest.fail("decoded twice"))
    cached = load_dataset(cifar10_dir, cache_dir=cache_dir, download=False, progress=False)

    assert (len(dataset.train), len(dataset.test)) == (50_000, 10_000)
    assert dataset.train.classes == CIFAR10_CLASSES
    assert tuple(dataset.train.images.shape[1:]) == (3, 32, 32)
    assert torch.bincount(dataset.train.labels).tolist() == [5_000] * 10
    assert torch.bincount(dataset.test.labels).tolist() == [1_000] * 10
    assert dataset.source.startswith("CIFAR-10")
    torch.testing.assert_close(dataset.mean, torch.tensor([0.491, 0.482, 0.447]), rtol=0, atol=0.005)
    assert torch.equal(cached.train.images, dataset.train.images)
