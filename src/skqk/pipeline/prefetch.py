"""Reading activation patterns off the critical path: a background thread reads the next batches' patterns
while the current batch trains.

The store's read (memory-mapped gather + bit unpacking) runs in NumPy, the training step in PyTorch kernels;
both release the GIL for their heavy parts, so one reader thread overlaps with the step.

Example:
    >>> for pattern in prefetched(store.read, order.split(64)):
    ...     ...  # the pattern of each batch, in order, read ahead by one thread
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")


class Prefetcher(Generic[K, T]):
    """Iterates ``read(key)`` for each key of `keys`, in order, keeping up to `depth` reads in flight.

    `wait_s` accumulates the time the consumer spent blocked on a read that was not done yet: the part of the
    read cost left on the critical path.
    """

    def __init__(self, read: Callable[[K], T], keys: Iterable[K], depth: int = 2):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._read = read
        self._keys = iter(keys)
        self._depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skqk-prefetch")
        self._pending: deque[Future[T]] = deque()
        self.wait_s = 0.0
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            try:
                key = next(self._keys)
            except StopIteration:
                return
            self._pending.append(self._pool.submit(self._read, key))

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if not self._pending:
            self.close()
            raise StopIteration
        start = time.perf_counter()
        value = self._pending.popleft().result()  # re-raises a failed read here, in order
        self.wait_s += time.perf_counter() - start
        self._fill()
        return value

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Prefetcher[K, T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetched(read: Callable[[K], T], keys: Iterable[K], depth: int = 2) -> Prefetcher[K, T]:
    """``(read(k) for k in keys)``, read ahead in a background thread."""
    return Prefetcher(read, keys, depth)
