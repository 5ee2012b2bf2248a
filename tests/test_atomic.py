"""Atomic writes leave files as an ordinary write would: the content, and permissions that respect the umask."""

import os
import stat

import pytest

from skqk.atomic import atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_an_atomically_written_file_has_the_permissions_of_a_plain_one(tmp_path, umask):
    previous = os.umask(umask)
    try:
        (tmp_path / "plain.json").write_text("{}")
        atomic_write_text(tmp_path / "atomic.json", "{}")
        assert os.umask(umask) == umask  # the umask is left as it was
    finally:
        os.umask(previous)

    mode = stat.S_IMODE((tmp_path / "atomic.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "atomic.json").read_text() == "{}"
