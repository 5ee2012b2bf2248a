"""The pattern store: the recorded activation patterns (SK) of the training samples, on disk (Phase 3's output).

`format` holds the on-disk layout and its crash safety, `pattern_store` the `PatternStore` (index, reads,
appends), `info` the summary printed by ``skqk patterns info``.
"""

from skqk.store.format import MANIFEST, ChunkInfo, SiteSpec, StoreError
from skqk.store.info import format_info
from skqk.store.pattern_store import PatternStore

__all__ = ["MANIFEST", "ChunkInfo", "PatternStore", "SiteSpec", "StoreError", "format_info"]
