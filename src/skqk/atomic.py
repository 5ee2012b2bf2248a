"""Atomic file writes: readers, and this process after a crash, see the old file or the complete new one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a temporary file in `path`'s folder that replaces `path` once written and fsynced; removed on error.
    The file gets the permissions `open` would give it (0666 less the umask).

    A full disk (or quota) becomes an OSError that says so and names `path`. A process killed midway leaves
    its temporary file, ``.<name>.<random>.part``; `remove_partial_writes` clears them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(handle, 0o666 & ~current_umask())  # mkstemp's 0600 would make results readable by their owner only
        with os.fdopen(handle, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise OSError(error.errno, f"disk full: cannot write {path} (an earlier version of it is intact)") from None
        raise
    fsync_dir(path.parent)


def current_umask() -> int:
    """The process's umask, the permission bits a plainly created file leaves out (`os.umask` only reads it by
    setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text.encode())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (new files, renames) durable too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_partial_writes(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Delete the temporary files of `atomic_write`s of `names` in `folder` killed before they completed.

    Only while no other process writes these files (e.g. when a run is resumed: its folder has one writer).
    """
    for name in names:
        for temporary in Path(folder).glob(f".{name}.*.part"):
            temporary.unlink(missing_ok=True)
