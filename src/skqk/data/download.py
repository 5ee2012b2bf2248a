"""Downloading CIFAR-10 from its official source, verified, so a default run needs no manual setup."""

from __future__ import annotations

import hashlib
import http.client
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from skqk.data.cache import atomic_write
from skqk.data.dataset import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
TIMEOUT_S = 60
CHUNK_BYTES = 1 << 20


def download_cifar10(destination: Path, progress: bool = True) -> Path:
    """Download the official CIFAR-10 python archive to `destination` (from `CIFAR10_URL`, checked against
    `CIFAR10_MD5`, both read at call time so tests can point them at a local server)."""
    return download(CIFAR10_URL, destination, CIFAR10_MD5, progress)


def download(url: str, destination: Path, md5: str, progress: bool = True) -> Path:
    """Fetch `url` into `destination`, verifying its size and md5.

    Args:
        url: what to fetch.
        destination: the file to create; it appears only once complete and verified.
        md5: expected hex digest of the content.
        progress: show a progress bar.

    Returns:
        `destination`.

    Raises:
        DataError: the transfer failed, was cut short or has the wrong checksum; no file is left behind.
    """
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, atomic_write(destination) as file:
            expected = response.headers.get("Content-Length")
            received, digest = copy_hashing(response, file, int(expected) if expected else None, progress)
            if expected and received != int(expected):
                raise DataError(f"download of {url} is incomplete ({received} of {expected} bytes); removed it")
            if digest != md5:
                raise DataError(f"download of {url} is corrupt (md5 {digest}, expected {md5}); removed it")
    except (OSError, http.client.HTTPException) as error:
        raise DataError(f"could not download {url}: {error}") from None
    return destination


def copy_hashing(source: BinaryIO, target: BinaryIO, total: int | None, progress: bool) -> tuple[int, str]:
    """Copy `source` to `target` in chunks; return the bytes copied and their md5."""
    digest, copied = hashlib.md5(usedforsecurity=False), 0
    with tqdm(total=total, unit="B", unit_scale=True, desc="downloading", disable=not progress) as bar:
        while chunk := source.read(CHUNK_BYTES):
            target.write(chunk)
            digest.update(chunk)
            copied += len(chunk)
            bar.update(len(chunk))
    return copied, digest.hexdigest()
