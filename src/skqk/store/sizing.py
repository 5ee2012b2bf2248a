"""How large a pattern store is, said before a recording or a QK run starts, and when patterns on the fly are the
better choice.

The trade-off, from `skqk bench` (docs/benchmarks.md, "pattern store or patterns on the fly"): a QK epoch from a
page-cached store costs 1.00-1.07x a traditional epoch, one with patterns on the fly 1.32-1.64x (LeNet-5, AlexNet,
VGG8); recording costs one selector pass, 0.25-0.74 of a traditional epoch. So a store pays from the second epoch on
when it fits in memory; on the fly is the better choice for a single epoch, or when the store does not fit on its
disk. A store larger than memory is read from disk every epoch, which the benchmark did not measure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from skqk.patterns import Pattern
from skqk.store.format import record_bytes, site_specs
from skqk.store.info import human_bytes

TRADE_OFF = (
    "from a page-cached store a QK epoch costs 1.00-1.07x a traditional one, on the fly 1.32-1.64x, and recording "
    "0.25-0.74x once (docs/benchmarks.md)"
)


def bytes_per_sample(selector, example: Pattern) -> int:
    """Bytes per sample of a new store of `selector`'s patterns (`example`: a pattern of one sample of it)."""
    return record_bytes(site_specs(example, selector.windows, selector.read_through))


def size_notice(per_sample: int, samples: int, folder: str | os.PathLike | None, reading: bool = False) -> str:
    """One line: the size of a store of `samples` samples in `folder` and whether patterns on the fly are the
    better choice (free space of its disk, this machine's memory). `reading`: a QK run reads an existing store;
    `folder` None: a QK run with patterns on the fly, which needs no store."""
    total = per_sample * samples
    size = f"{per_sample:,} bytes per sample x {samples:,} samples = {human_bytes(total)}"
    if folder is None:
        return f"patterns on the fly: a store of them would take {size} (`skqk record`); {TRADE_OFF}"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    free = shutil.disk_usage(_existing(Path(folder))).free
    if not reading and total > free:
        advice = f"more than the {human_bytes(free)} free on its disk: use `retrain --patterns on-the-fly` instead"
    elif total > memory:
        advice = (
            f"more than this machine's {human_bytes(memory)} of memory, so every epoch reads it from disk (not "
            f"measured); {TRADE_OFF}"
        )
    else:
        advice = f"it fits in memory, so a store pays from the second epoch on; {TRADE_OFF}"
    return f"pattern store {folder}: {size}; {advice}"


def _existing(path: Path) -> Path:
    """The nearest folder of `path` that exists (a store folder is created by the recording)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
