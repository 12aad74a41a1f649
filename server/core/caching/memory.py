"""The in-process tier: an LRU of cached answers bounded by bytes, each with a TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from llmproxy.server.core.caching.entry import CachedAnswer

# Per-entry bookkeeping (key, tuple, dict slot) on top of the serialised size.
ENTRY_OVERHEAD = 200


class MemoryTier:
    """Least recently used entries go first once the byte bound is reached.

    Sizes are the serialised entry (the same bytes Redis would hold) plus the key,
    which tracks real memory closely enough to bound it without measuring objects.
    """

    def __init__(self, max_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.bytes_used = 0
        self._clock = clock
        # key -> (expires_at, size, answer)
        self._entries: OrderedDict[str, tuple[float, int, CachedAnswer]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedAnswer | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return item[2]

    def get_first(self, keys: Iterable[str]) -> CachedAnswer | None:
        for key in keys:
            if (answer := self.get(key)) is not None:
                return answer
        return None

    def put(self, key: str, answer: CachedAnswer, size: int, ttl_s: float) -> bool:
        """Store unless the entry alone exceeds the bound; evict the least recently used."""
        size += len(key) + ENTRY_OVERHEAD
        if size > self.max_bytes or ttl_s <= 0:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._clock() + ttl_s, size, answer)
        self.bytes_used += size
        while self.bytes_used > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        return True

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes_used -= size
