"""The decoded-data cache: reused, rebuilt when corrupt or stale, and never written next to the data."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import skqk.data.dataset
import skqk.data.loading
from skqk.data import DataError, load_dataset


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Records every decode of a source (the slow path the cache exists to skip)."""
    calls = []
    read_source = skqk.data.loading.read_source

    def counting_read_source(*args, **kwargs):
        calls.append(args[0])
        return read_source(*args, **kwargs)

    monkeypatch.setattr(skqk.data.loading, "read_source", counting_read_source)
    return calls


def load(path, cache_dir):
    return load_dataset(path, cache_dir=cache_dir, progress=False)


def cache_files(cache_dir) -> list:
    return sorted(cache_dir.iterdir())


def test_second_load_reads_the_cache(tmp_path, cache_dir, image_tree, decodes):
    image_tree(tmp_path / "tree")

    first = load(tmp_path / "tree", cache_dir)
    second = load(tmp_path / "tree", cache_dir)

    assert len(decodes) == 1
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)
    assert torch.equal(first.std, second.std)
    assert (first.source, first.train.classes) == (second.source, second.train.classes)
    assert [path.suffix for path in cache_files(cache_dir)] == [".pt"]  # no temporary file left behind


def test_fingerprint_is_cached_with_the_decoded_data(tmp_path, cache_dir, image_tree, monkeypatch):
    image_tree(tmp_path / "tree")
    first = load(tmp_path / "tree", cache_dir)

    monkeypatch.setattr(skqk.data.dataset, "content_fingerprint", lambda *args: pytest.fail("hashed again"))
    second = load(tmp_path / "tree", cache_dir)

    assert second.fingerprint == first.fingerprint and len(first.fingerprint) == 64


def test_empty_class_folder_made_after_caching_is_noticed(tmp_path, cache_dir, image_tree):
    image_tree(tmp_path / "tree")
    load(tmp_path / "tree", cache_dir)
    (tmp_path / "tree" / "train" / "yak").mkdir()

    with pytest.raises(DataError, match="class folder train/yak holds no images"):
        load(tmp_path / "tree", cache_dir)


def corrupt_garbage(path):
    path.write_bytes(b"garbage")


def corrupt_truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


def corrupt_inconsistent(path):
    content = torch.load(path, weights_only=True)
    content["train_labels"] = content["train_labels"][:-1]
    torch.save(content, path)


@pytest.mark.parametrize("corrupt", [corrupt_garbage, corrupt_truncate, corrupt_inconsistent])
def test_corrupt_cache_file_is_rebuilt(tmp_path, cache_dir, image_tree, decodes, corrupt):
    image_tree(tmp_path / "tree")
    original = load(tmp_path / "tree", cache_dir)
    (cached,) = cache_files(cache_dir)
    corrupt(cached)

    with pytest.warns(UserWarning, match="ignoring unreadable data cache"):
        rebuilt = load(tmp_path / "tree", cache_dir)
    reloaded = load(tmp_path / "tree", cache_dir)

    assert len(decodes) == 2
    for dataset in (rebuilt, reloaded):
        assert torch.equal(dataset.train.images, original.train.images)
        assert torch.equal(dataset.train.labels, original.train.labels)


def test_changed_source_is_decoded_again(tmp_path, cache_dir, image_tree, decodes):
    image_tree(tmp_path / "tree", size=4)
    before = load(tmp_path / "tree", cache_dir)
    white = np.full((4, 4, 3), 255, dtype=np.uint8)
    Image.fromarray(white).save(tmp_path / "tree" / "test" / "cat" / "0.png")  # the first test image
    os.utime(tmp_path / "tree" / "test" / "cat" / "0.png", ns=(1, 1))  # a distinct mtime even on coarse clocks

    after = load(tmp_path / "tree", cache_dir)

    assert len(decodes) == 2
    assert not torch.equal(before.test.images[0], after.test.images[0])
    assert bool((after.test.images[0] == 255).all())


def snapshot(folder) -> dict:
    return {path: path.stat().st_mtime_ns for path in sorted(folder.rglob("*"))}


def test_read_only_data_folder_is_only_read(tmp_path, cache_dir, image_tree, cifar_batches, tar_of):
    image_tree(tmp_path / "data" / "tree")
    cifar_batches(tmp_path / "data" / "cifar" / "cifar-10-batches-py")
    tar_of(tmp_path / "data" / "tree", tmp_path / "data" / "tree.tar.gz")
    before = snapshot(tmp_path / "data")
    folders = [tmp_path / "data", *(path for path in (tmp_path / "data").rglob("*") if path.is_dir())]
    for folder in folders:
        folder.chmod(0o555)
    try:
        for source in ("tree", "cifar", "tree.tar.gz"):
            assert len(load(tmp_path / "data" / source, cache_dir).train) > 0
    finally:
        for folder in folders:
            folder.chmod(0o755)

    assert snapshot(tmp_path / "data") == before  # root ignores permissions: check nothing was written
    assert len(cache_files(cache_dir)) == 3


def test_cache_folder_defaults_to_the_environment_variable(tmp_path, image_tree, monkeypatch):
    image_tree(tmp_path / "tree")
    monkeypatch.setenv("SKQK_CACHE", str(tmp_path / "env-cache"))

    load_dataset(tmp_path / "tree", progress=False)

    assert [path.suffix for path in cache_files(tmp_path / "env-cache")] == [".pt"]
