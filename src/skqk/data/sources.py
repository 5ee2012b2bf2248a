"""Reading a dataset from a folder or a tar archive: CIFAR-10 python batches or an image-folder tree.

Both layouts are recognised from file paths alone, so a folder and a tar archive (streamed, never extracted,
so member paths cannot escape anywhere) go through the same code. Accepted paths, relative to the source,
where ROOT is optional (a dataset may sit one folder down, like ``cifar-10-batches-py/`` in the official
archive):

* ``[ROOT/]data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``: the CIFAR-10 python batches;
* ``[ROOT/]{train,test}/<class>/<image>.{jpg,jpeg,png,bmp}``: an image-folder tree, labels by sorted class name.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from skqk.data.dataset import DataError, Dataset, ImageData, content_fingerprint
from skqk.data.formats import (
    KNOWN_DATASETS,
    cifar_batch,
    cifar_label_names,
    decode_image,
    image_encoding,
)

SPLITS = ("train", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
EXPECTED_LAYOUT = "expected cifar-10-batches-py files or train/ and test/ folders of class folders of images"
# Files are read whole, so their size is checked first (a 0.5 MB tar.gz can hold a 400 MB file). The largest
# file a layout holds: a CIFAR-10 batch is 31 MB, an uncompressed 24-bit BMP of MAX_IMAGE_PIXELS 48 MB.
MAX_FILE_BYTES = 64 << 20

Parts = tuple[str, ...]
Member = tuple[Parts, bytes | None]  # content None: a class folder, so that an empty one is noticed


class ImageFile(NamedTuple):
    path: str  # relative to the source, '/'-separated
    split: str
    class_name: str
    pixels: np.ndarray


def dataset_root(parts: Parts) -> str | None:
    """The folder (relative to the source, "" for itself) of the dataset a file belongs to, None if none.

    Hidden files and folders (e.g. macOS "._" files in archives) belong to none.
    """
    if 1 <= len(parts) <= 2 and parts[-1] in CIFAR10_FILES:
        root = parts[:-1]
    elif len(parts) in (3, 4) and parts[-3] in SPLITS and os.path.splitext(parts[-1])[1].lower() in IMAGE_SUFFIXES:
        root = parts[:-3]
    else:
        return None
    path = "/".join(parts)
    return None if path.startswith(".") or "/." in path else "/".join(root)


def is_class_folder(parts: Parts) -> bool:
    """Whether a folder is a ``[ROOT/]{train,test}/<class>`` folder of an image tree."""
    return len(parts) in (2, 3) and parts[-2] in SPLITS and not any(part.startswith(".") for part in parts)


def may_hold_dataset_files(folder: Parts) -> bool:
    """Whether a folder can contain a file that `dataset_root` accepts, to keep folder walks shallow."""
    if len(folder) == 1:
        return not folder[0].startswith(".")
    if len(folder) == 2:
        return folder[0] in SPLITS or folder[1] in SPLITS
    return len(folder) == 3 and folder[1] in SPLITS


def folder_entries(folder: Path) -> Iterator[str]:
    """Paths of the folders below `folder` that may hold dataset files and of their files, in a fixed order."""
    for directory, subdirectories, names in os.walk(folder, followlinks=True):
        relative = Path(directory).relative_to(folder).parts
        subdirectories[:] = sorted(name for name in subdirectories if may_hold_dataset_files((*relative, name)))
        yield directory
        yield from (os.path.join(directory, name) for name in sorted(names))


def safe_member_parts(name: str, archive: Path) -> Parts:
    """Path parts of a tar member; absolute or parent-relative names mark a hostile archive."""
    parts = PurePosixPath(name).parts
    if parts[:1] == ("/",) or ".." in parts:
        raise DataError(f"archive {archive} has an unsafe member path {name!r}")
    return parts


def check_file_size(size: int, path: str) -> None:
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path} is {size} bytes, more than any dataset file ({MAX_FILE_BYTES} bytes at most)")


def archive_members(archive: Path) -> Iterator[Member]:
    """(relative parts, content) of the dataset files and class folders in a tar archive, in one streaming pass."""
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                parts = safe_member_parts(member.name, archive)
                if member.isdir() and is_class_folder(parts):
                    yield parts, None
                elif member.isfile() and dataset_root(parts) is not None:
                    check_file_size(member.size, f"{archive}: {member.name}")  # the header's size bounds read()
                    yield parts, tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read archive {archive}: {error}") from None


def folder_members(folder: Path) -> Iterator[Member]:
    """(relative parts, content) of the dataset files and class folders in a folder tree."""
    for path in folder_entries(folder):
        parts = Path(path).relative_to(folder).parts
        if os.path.isdir(path):
            if is_class_folder(parts):
                yield parts, None
        elif dataset_root(parts) is not None:
            try:
                check_file_size(os.path.getsize(path), path)
                yield parts, Path(path).read_bytes()
            except OSError as error:
                raise DataError(f"cannot read {path}: {error}") from None


def source_members(source: Path) -> Iterator[Member]:
    if source.is_dir():
        return folder_members(source)
    if source.is_file() and tarfile.is_tarfile(source):
        return archive_members(source)
    raise DataError(f"{source} is neither a folder nor a tar archive; {EXPECTED_LAYOUT}")


def source_signature(source: Path) -> str:
    """Hash of the path, sizes and modification times of a source's files: changes whenever its data does.

    For a folder, every file and folder where a dataset may be counts (a folder's time changes when an entry
    is added or removed, e.g. an empty class folder): classifying each would cost more than the stat calls,
    and this runs on every load.
    """
    digest = hashlib.sha256(str(source.resolve()).encode())
    files = [str(source)] if source.is_file() else folder_entries(source)
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_source(source: Path, progress: bool = True) -> Dataset:
    """Decode the one dataset found in a folder or tar archive.

    Args:
        source: a folder or a tar archive (any compression) holding one of the layouts of this module.
        progress: show a progress bar over the files read.

    Returns:
        The dataset, with its statistics computed from the train split.

    Raises:
        DataError: no dataset, several, or one that is incomplete or malformed (an empty class folder, a file
            larger than any dataset file, an image of more than `MAX_IMAGE_PIXELS`).
    """
    cifar_files: dict[str, dict[str, bytes]] = defaultdict(dict)
    images: dict[str, list[ImageFile]] = defaultdict(list)
    class_folders: dict[str, list[Parts]] = defaultdict(list)
    samples: dict[str, bytes] = {}
    members = tqdm(source_members(source), desc=f"reading {source.name}", unit=" files", disable=not progress)
    for parts, content in members:
        if content is None:
            class_folders["/".join(parts[:-2])].append(parts)
            continue
        root = dataset_root(parts)
        if parts[-1] in CIFAR10_FILES:
            cifar_files[root][parts[-1]] = content
        else:
            path = "/".join(parts)
            images[root].append(ImageFile(path, parts[-3], parts[-2], decode_image(content, path)))
            samples.setdefault(root, content)
    found = [(root, "CIFAR-10 batches") for root in cifar_files] + [(root, "image folders") for root in images]
    if len(found) != 1:
        detail = "found " + ", ".join(f"{kind} in {root or '.'}" for root, kind in sorted(found))
        raise DataError(f"no single dataset in {source}: {detail if found else EXPECTED_LAYOUT}")
    ((root, _),) = found
    if root in cifar_files:
        return cifar_dataset(cifar_files[root], source)
    return image_tree_dataset(images[root], samples[root], class_folders[root], source)


def cifar_dataset(files: dict[str, bytes], source: Path) -> Dataset:
    """The dataset in the CIFAR-10 python files `files` (name -> content)."""
    missing = [name for name in CIFAR10_FILES if name not in files]
    if missing:
        raise DataError(f"incomplete CIFAR-10 python batches in {source}: missing {', '.join(missing)}")
    classes = cifar_label_names(files["batches.meta"], "batches.meta")
    train_images, train_labels = zip(*(cifar_batch(files[name], name) for name in CIFAR10_TRAIN_FILES))
    train = ImageData(torch.cat(train_images), torch.cat(train_labels), classes)
    test = ImageData(*cifar_batch(files["test_batch"], "test_batch"), classes)
    return Dataset.from_splits(train, test, f"CIFAR-10 python batches from {source}")


def image_tree_dataset(images: list[ImageFile], sample: bytes, class_folders: list[Parts], source: Path) -> Dataset:
    """The dataset of an image-folder tree; `sample` is one file's content, to describe the encoding.

    Named after the data itself: a known dataset by its content fingerprint, anything else as an image
    folder, whatever its class names.
    """
    images.sort(key=lambda image: image.path)
    check_no_empty_class_folder(images, class_folders, source)
    check_same_square_size(images, source)
    classes = sorted({image.class_name for image in images if image.split == "train"})
    unknown = sorted({image.class_name for image in images} - set(classes))
    if unknown:
        raise DataError(f"test classes without train images in {source}: {', '.join(unknown)}")
    channels = 3 if any(image.pixels.ndim == 3 for image in images) else 1
    train, test = (split_data(images, split, classes, channels, source) for split in SPLITS)
    fingerprint = content_fingerprint(train, test)
    title = KNOWN_DATASETS.get(fingerprint) or f"image folder ({image_encoding(sample)})"
    return Dataset.from_splits(train, test, f"{title} from {source}", fingerprint)


def check_no_empty_class_folder(images: list[ImageFile], class_folders: list[Parts], source: Path) -> None:
    """A class folder without images would silently drop its class (or its test samples): refuse it."""
    filled = {(image.split, image.class_name) for image in images}
    empty = sorted("/".join(parts) for parts in class_folders if parts[-2:] not in filled)
    if empty:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(
            f"{source}: class folder {', '.join(empty)} holds no images ({suffixes}); add some or remove it"
        )


def check_same_square_size(images: list[ImageFile], source: Path) -> None:
    """Models need one square input size; name the first file that breaks it."""
    first = images[0]
    height, width = first.pixels.shape[:2]
    if height != width:
        raise DataError(f"{source}: {first.path} is {width}x{height} pixels; images must be square")
    for image in images:
        if image.pixels.shape[:2] != (height, width):
            size = "x".join(map(str, image.pixels.shape[1::-1]))
            raise DataError(
                f"{source}: {image.path} is {size} pixels but {first.path} is {width}x{height};"
                " all images must have the same size"
            )


def split_data(images: list[ImageFile], split: str, classes: list[str], channels: int, source: Path) -> ImageData:
    """One split of an image tree as uint8 (N, C, H, W), grayscale images repeated to RGB if `channels` is 3."""
    chosen = [image for image in images if image.split == split]
    if not chosen:
        raise DataError(f"no {split}/ images in {source}; {EXPECTED_LAYOUT}")
    height, width = chosen[0].pixels.shape[:2]
    pixels = np.stack([np.broadcast_to(np.atleast_3d(image.pixels), (height, width, channels)) for image in chosen])
    label_of = {name: label for label, name in enumerate(classes)}
    labels = torch.tensor([label_of[image.class_name] for image in chosen], dtype=torch.int64)
    return ImageData(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels, classes)
