"""Background pattern reads (skqk.pipeline.prefetch): same values in the same order, failures re-raised in order."""

import threading

import pytest

from skqk.pipeline.prefetch import Prefetcher, prefetched


def test_prefetcher_yields_reads_in_order_from_another_thread():
    seen_threads = set()

    def read(k):
        seen_threads.add(threading.get_ident())
        return k * k

    p = prefetched(read, range(10), depth=3)
    assert list(p) == [k * k for k in range(10)]
    assert p.wait_s >= 0
    assert threading.get_ident() not in seen_threads


def test_prefetcher_reraises_a_failed_read_in_order():
    def read(k):
        if k == 2:
            raise KeyError(k)
        return k

    with Prefetcher(read, range(5)) as p:
        assert next(p) == 0 and next(p) == 1
        with pytest.raises(KeyError):
            next(p)


def test_prefetcher_rejects_zero_depth():
    with pytest.raises(ValueError):
        Prefetcher(lambda k: k, [], depth=0)
