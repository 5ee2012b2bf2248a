"""The benchmark of QK-only against traditional re-training (``skqk bench``, docs/benchmarks.md)."""
