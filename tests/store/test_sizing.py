"""What `record` and `retrain` say before they start: the store's size and when patterns on the fly are better."""

import os
import shutil
from collections import namedtuple

import pytest
from store_helpers import recorded, selector_of

from skqk.store import sizing

Usage = namedtuple("Usage", "total used free")


def test_bytes_per_sample_is_what_a_store_of_the_selector_takes(tmp_path):
    selector = selector_of("vgg8", "frozen")
    store, _, pattern = recorded(tmp_path, selector, appends=(2,))
    assert sizing.bytes_per_sample(selector, pattern[:1]) == store.bytes_per_sample


@pytest.mark.parametrize(
    "free, memory, advice",
    [
        (1 << 40, 1 << 40, "it fits in memory, so a store pays from the second epoch on"),
        (1 << 40, 1 << 20, "more than this machine's 1.0 MiB of memory"),
        (1 << 20, 1 << 40, "more than the 1.0 MiB free on its disk: use `retrain --patterns on-the-fly`"),
    ],
)
def test_the_notice_says_when_patterns_on_the_fly_are_the_better_choice(tmp_path, monkeypatch, free, memory, advice):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(free, 0, free))
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": memory // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    folder = tmp_path / "new" / "store"  # not there yet: the free space of the disk it will be on
    notice = sizing.size_notice(617, 10_000, folder)
    assert notice.startswith(f"pattern store {folder}: 617 bytes per sample x 10,000 samples = 5.9 MiB")
    assert advice in notice and "\n" not in notice
