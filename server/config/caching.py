"""Response caching, the usage ledger and spend budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmproxy.server.config.base import Section


class ExactCacheConfig(Section):
    enabled: bool = True
    ttl_s: float = Field(300, gt=0)
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"


class SemanticCacheConfig(Section):
    enabled: bool = False
    threshold: float = Field(0.92, gt=0, le=1)
    ttl_s: float = Field(3600, gt=0)


class CacheConfig(Section):
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig()
    coalesce: bool = True


class LedgerConfig(Section):
    backend: Literal["sqlite", "postgres", "none"] = "sqlite"
    path: str = "llmproxy-usage.db"
    dsn: str = "postgresql://127.0.0.1:5432/test"
    flush_interval_ms: float = Field(500, gt=0)


class BudgetConfig(Section):
    key_id: str = Field(min_length=1)
    period: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0)
