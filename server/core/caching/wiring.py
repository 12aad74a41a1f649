"""Builds the cache stage from its config; nothing is built for a feature that is off."""

from __future__ import annotations

from llmproxy.server.config.caching import CacheConfig
from llmproxy.server.core.caching.coalescer import Coalescer
from llmproxy.server.core.caching.memory import MemoryTier
from llmproxy.server.core.caching.redis_tier import RedisTier
from llmproxy.server.core.caching.stage import ResponseCache
from llmproxy.server.core.caching.tiers import ExactCache


def build_cache(config: CacheConfig) -> ResponseCache | None:
    exact_cfg, semantic_cfg = config.exact, config.semantic
    if not (exact_cfg.enabled or semantic_cfg.enabled or config.coalesce):
        return None
    redis = None
    if exact_cfg.backend == "redis" and (exact_cfg.enabled or semantic_cfg.enabled):
        redis = RedisTier.from_url(
            exact_cfg.redis_url,
            timeout_s=exact_cfg.redis_timeout_ms / 1000,
            retry_s=exact_cfg.redis_retry_s,
        )
    exact = None
    if exact_cfg.enabled:
        exact = ExactCache(MemoryTier(exact_cfg.max_bytes), redis, exact_cfg.ttl_s)
    semantic = None
    if semantic_cfg.enabled:
        # Imported only here: numpy and the model (torch) are the optional `semantic` extra.
        from llmproxy.server.core.caching.embedder import DIM, MiniLMEmbedder
        from llmproxy.server.core.caching.semantic import SemanticCache
        from llmproxy.server.core.caching.vectors import VectorIndex

        semantic = SemanticCache(
            MiniLMEmbedder(),
            VectorIndex(DIM, semantic_cfg.max_entries),
            redis,
            threshold=semantic_cfg.threshold,
            ttl_s=semantic_cfg.ttl_s,
            prefix=exact_cfg.key_prefix,
            max_per_set=semantic_cfg.redis_max_per_set,
        )
    return ResponseCache(
        exact,
        prefix=exact_cfg.key_prefix,
        semantic=semantic,
        semantic_models=frozenset(semantic_cfg.models),
        coalescer=Coalescer() if config.coalesce else None,
        redis=redis,
    )
