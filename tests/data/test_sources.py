"""`load_dataset` on every accepted layout, and one-line DataErrors on malformed ones."""

import io
import os
import pickle
import re
import struct
import tarfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from skqk.data import DataError, Dataset, load_dataset


def load(path, cache_dir) -> Dataset:
    return load_dataset(path, cache_dir=cache_dir, progress=False)


def assert_matches(dataset: Dataset, expected) -> None:
    for split in ("train", "test"):
        data = getattr(dataset, split)
        assert torch.equal(data.images, torch.from_numpy(expected[split].images))
        assert torch.equal(data.labels, torch.from_numpy(expected[split].labels))


def assert_same(a: Dataset, b: Dataset) -> None:
    for split in ("train", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels)
    assert a.train.classes == b.train.classes


@pytest.mark.parametrize("channels", [3, 1])
def test_image_folder_loads_pixels_labels_and_train_statistics(tmp_path, cache_dir, image_tree, channels):
    expected = image_tree(tmp_path / "tree", channels=channels, size=8)

    dataset = load(tmp_path / "tree", cache_dir)

    assert_matches(dataset, expected)
    assert dataset.train.classes == dataset.test.classes == ["cat", "dog", "emu"]
    assert (len(dataset.train), len(dataset.test)) == (12, 6)
    assert (dataset.in_channels, dataset.image_size, dataset.num_classes) == (channels, 8, 3)
    pixels = expected["train"].images / 255.0
    assert dataset.mean.dtype == dataset.std.dtype == torch.float32
    np.testing.assert_allclose(dataset.mean.numpy(), pixels.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(dataset.std.numpy(), pixels.std(axis=(0, 2, 3)), atol=1e-6)
    assert dataset.source == f"image folder (PNG) from {tmp_path / 'tree'}"


def test_grayscale_files_among_rgb_ones_become_rgb(tmp_path, cache_dir, image_tree):
    expected = image_tree(tmp_path / "tree", channels=3, gray_files=1)

    dataset = load(tmp_path / "tree", cache_dir)

    assert dataset.in_channels == 3
    assert_matches(dataset, expected)


def test_tar_archives_and_nested_layouts_give_the_same_tensors(tmp_path, cache_dir, image_tree, tar_of):
    image_tree(tmp_path / "parent" / "mydata")
    direct = load(tmp_path / "parent" / "mydata", cache_dir)

    nested = load(tmp_path / "parent", cache_dir)
    flat_archive = load(tar_of(tmp_path / "parent" / "mydata", tmp_path / "flat.tar"), cache_dir)
    nested_archive = load(tar_of(tmp_path / "parent" / "mydata", tmp_path / "n.tgz", "mydata"), cache_dir)

    for other in (nested, flat_archive, nested_archive):
        assert_same(direct, other)
        assert torch.equal(direct.mean, other.mean) and torch.equal(direct.std, other.std)


def test_cifar10_class_names_alone_do_not_make_a_dataset_cifar10(tmp_path, cache_dir):
    """Ten red squares in folders named like CIFAR-10's classes are an image folder, described by encoding."""
    for split in ("train", "test"):
        for name in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]:
            (tmp_path / "t" / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4), (200, 10, 10)).save(tmp_path / "t" / split / name / "0.jpg", quality=75)

    dataset = load(tmp_path / "t", cache_dir)

    assert dataset.source == f"image folder (JPEG q75) from {tmp_path / 't'}"
    assert dataset.train.labels.tolist() == list(range(10))


def test_one_class_dataset_warns_that_accuracy_means_nothing(tmp_path, cache_dir):
    for split in ("train", "test"):
        write_file(tmp_path / "one" / split / "cat" / "0.png", png((8, 8)))

    with pytest.warns(UserWarning, match=r"has a single class, 'cat': accuracy is trivially 1.0"):
        load(tmp_path / "one", cache_dir)
    with pytest.warns(UserWarning, match=r"single class"):  # also when read back from the cache
        load(tmp_path / "one", cache_dir)


def peak_memory() -> int:
    """Peak resident memory of this process in bytes, since the last `reset_peak_memory` (Linux)."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def load_error_and_peak_growth(path, cache_dir) -> tuple[str, int]:
    """The DataError message of loading `path`, and how far resident memory rose above its start meanwhile."""
    try:
        reset_peak_memory()
    except OSError:
        pytest.skip("peak memory cannot be reset here (/proc/self/clear_refs is Linux-only)")
    start = peak_memory()
    with pytest.raises(DataError) as error:
        load(path, cache_dir)
    return str(error.value), peak_memory() - start


def huge_black_png(side: int) -> bytes:
    """A valid `side` x `side` grayscale PNG, all black: a few kB on disk, side**2 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, rows = zlib.compressobj(9), bytes(side + 1)  # each row: filter byte 0, then black pixels
    pixels = b"".join(compressor.compress(rows) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path, cache_dir, image_tree):
    image_tree(tmp_path / "tree")
    write_file(tmp_path / "tree" / "train" / "cat" / "huge.png", huge_black_png(8000))  # 64 MB decoded, 64 kB here

    message, growth = load_error_and_peak_growth(tmp_path / "tree", cache_dir)

    assert growth < 16 << 20, f"peak memory grew by {growth >> 20} MB"
    assert re.fullmatch(
        r"cannot decode image train/cat/huge.png: 8000x8000 pixels is more than the \d+ allowed", message
    )


def test_oversized_archive_member_is_refused_before_reading(tmp_path, cache_dir):
    """A tar.gz of 0.1 MB holding a 100 MB file (zeros compress 1000-fold) is refused from the member header."""
    archive, size = tmp_path / "bomb.tar.gz", 100 << 20
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        member = tarfile.TarInfo("train/cat/0.png")
        member.size = size
        tar.addfile(member, io.BytesIO(bytes(size)))

    message, growth = load_error_and_peak_growth(archive, cache_dir)

    assert growth < 16 << 20, f"peak memory grew by {growth >> 20} MB"
    assert message == f"{archive}: train/cat/0.png is {size} bytes, more than any dataset file (67108864 bytes at most)"


@pytest.mark.parametrize("where", ["folder", "parent", "archive"])
def test_cifar10_python_batches(tmp_path, cache_dir, cifar_batches, tar_of, where):
    expected = cifar_batches(tmp_path / "in" / "cifar-10-batches-py")
    paths = {
        "folder": tmp_path / "in" / "cifar-10-batches-py",
        "parent": tmp_path / "in",
        "archive": tmp_path / "cifar-10-python.tar.gz",
    }
    if where == "archive":
        tar_of(paths["folder"], paths["archive"], "cifar-10-batches-py")

    dataset = load(paths[where], cache_dir)

    assert_matches(dataset, expected)
    assert dataset.train.classes[0] == "airplane" and dataset.num_classes == 10
    assert (len(dataset.train), len(dataset.test), dataset.image_size) == (20, 6, 32)
    assert dataset.source == f"CIFAR-10 python batches from {paths[where]}"


class Exploit:
    def __reduce__(self):
        return os.getcwd, ()


def test_cifar10_batch_cannot_run_code_when_unpickled(tmp_path, cache_dir, cifar_batches):
    cifar_batches(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps(Exploit()))

    with pytest.raises(DataError, match=r"test_batch: global \w+.getcwd is not allowed"):
        load(tmp_path / "c", cache_dir)


def write_file(path, content: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, "PNG")
    return buffer.getvalue()


def make_missing(root, tree, cifar):
    return root / "nowhere"


def make_empty(root, tree, cifar):
    root.mkdir()
    return root


def make_classes_without_splits(root, tree, cifar):
    write_file(root / "cat" / "0.png", png((8, 8)))
    return root


def make_mixed_sizes(root, tree, cifar):
    tree(root, size=8)
    write_file(root / "train" / "dog" / "9.png", png((16, 16)))
    return root


def make_non_square(root, tree, cifar):
    write_file(root / "test" / "cat" / "0.png", png((8, 6)))
    write_file(root / "train" / "cat" / "0.png", png((8, 6)))
    return root


def make_train_only(root, tree, cifar):
    tree(root, counts={"train": 2})
    return root


def make_test_only_class(root, tree, cifar):
    tree(root)
    write_file(root / "test" / "yak" / "0.png", png((8, 8)))
    return root


def make_two_datasets(root, tree, cifar):
    tree(root / "a")
    cifar(root / "b")
    return root


def make_undecodable_image(root, tree, cifar):
    tree(root)
    write_file(root / "train" / "cat" / "bad.png", b"not a png")
    return root


def make_empty_class_folder(root, tree, cifar):
    tree(root)
    (root / "train" / "yak").mkdir()
    return root


def make_archive_with_empty_class_folder(root, tree, cifar):
    tree(root / "tree")
    (root / "tree" / "test" / "yak").mkdir()
    with tarfile.open(root / "a.tar.gz", "w:gz") as tar:
        tar.add(root / "tree", arcname=".")
    return root / "a.tar.gz"


def make_oversized_file(root, tree, cifar):
    tree(root)
    with open(root / "train" / "cat" / "big.png", "wb") as file:
        file.truncate(65 << 20)  # sparse: 65 MB long, no disk used
    return root


def make_incomplete_cifar(root, tree, cifar):
    cifar(root)
    (root / "test_batch").unlink()
    return root


def make_plain_file(root, tree, cifar):
    write_file(root / "data.txt", b"hello")
    return root / "data.txt"


def make_truncated_archive(root, tree, cifar):
    tree(root / "tree")
    with tarfile.open(root / "a.tar.gz", "w:gz") as tar:
        tar.add(root / "tree", arcname=".")
    content = (root / "a.tar.gz").read_bytes()
    (root / "a.tar.gz").write_bytes(content[: len(content) // 2])
    return root / "a.tar.gz"


def make_traversing_archive(root, tree, cifar):
    root.mkdir()
    with tarfile.open(root / "evil.tar", "w") as tar:
        member = tarfile.TarInfo("../train/cat/0.png")
        content = png((8, 8))
        member.size = len(content)
        tar.addfile(member, io.BytesIO(content))
    return root / "evil.tar"


MALFORMED = {
    make_missing: r"nowhere does not exist",
    make_empty: r"no single dataset in .*: expected cifar-10-batches-py files or train/ and test/",
    make_classes_without_splits: r"no single dataset in .*: expected",
    make_mixed_sizes: r"train/dog/9.png is 16x16 pixels but test/cat/0.png is 8x8; all images must have the same",
    make_non_square: r"test/cat/0.png is 8x6 pixels; images must be square",
    make_train_only: r"no test/ images in",
    make_test_only_class: r"test classes without train images in .*: yak",
    make_two_datasets: r"found image folders in a, CIFAR-10 batches in b",
    make_undecodable_image: r"cannot decode image train/cat/bad.png",
    make_empty_class_folder: r"class folder train/yak holds no images \(.bmp, .jpeg, .jpg, .png\); add some or",
    make_archive_with_empty_class_folder: r"a.tar.gz: class folder test/yak holds no images",
    make_oversized_file: r"train/cat/big.png is 68157440 bytes, more than any dataset file",
    make_incomplete_cifar: r"incomplete CIFAR-10 python batches in .*: missing test_batch",
    make_plain_file: r"data.txt is neither a folder nor a tar archive",
    make_truncated_archive: r"cannot read archive .*a.tar.gz",
    make_traversing_archive: r"unsafe member path '../train/cat/0.png'",
}


@pytest.mark.parametrize("make, message", MALFORMED.items(), ids=[make.__name__ for make in MALFORMED])
def test_malformed_data_raises_one_line_data_error(tmp_path, cache_dir, image_tree, cifar_batches, make, message):
    path = make(tmp_path / "data", image_tree, cifar_batches)

    with pytest.raises(DataError, match=message) as error:
        load(path, cache_dir)

    assert "\n" not in str(error.value)
