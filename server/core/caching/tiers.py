"""The exact cache: the in-process LRU in front of the optional shared Redis tier."""

from __future__ import annotations

import time

from llmproxy.server.core.caching.entry import CachedAnswer
from llmproxy.server.core.caching.memory import MemoryTier
from llmproxy.server.core.caching.redis_tier import RedisTier


class ExactCache:
    def __init__(self, memory: MemoryTier, redis: RedisTier | None, ttl_s: float) -> None:
        self.memory = memory
        self.redis = redis
        self.ttl_s = ttl_s

    def get_local(self, keys: list[str]) -> CachedAnswer | None:
        """Synchronous, so a local hit costs no await at all."""
        return self.memory.get_first(keys)

    async def get_shared(self, keys: list[str]) -> CachedAnswer | None:
        """Look in Redis and keep a hit locally for the rest of its life."""
        if self.redis is None:
            return None
        found = await self.redis.get_first(keys)
        if found is None:
            return None
        key, data = found
        answer = CachedAnswer.decode(data)
        if answer is not None:
            left = self.ttl_s - (time.time() - answer.created_at)
            self.memory.put(key, answer, len(data), left)
        return answer

    def put(self, key: str, answer: CachedAnswer) -> bytes:
        data = answer.encode()
        self.memory.put(key, answer, len(data), self.ttl_s)
        if self.redis is not None:
            self.redis.set_later(key, data, self.ttl_s)
        return data
