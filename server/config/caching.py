"""Response caching, the usage ledger and spend budgets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

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


SQL_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,47}$"


class LedgerConfig(Section):
    """Where usage records go. Writes are batched off the request path (see accounting.ledger).

    A crash loses at most the records of the last `flush_interval_ms`; a graceful
    stop flushes everything.
    """

    backend: Literal["sqlite", "postgres", "none"] = "sqlite"
    path: str = "llmproxy-usage.db"
    dsn: SecretStr = SecretStr("postgresql://127.0.0.1:5432/test")
    table: str = Field("llmproxy_usage", pattern=SQL_NAME)
    flush_interval_ms: float = Field(500, gt=0)
    # A batch is written early once this many records wait.
    max_batch: int = Field(1000, ge=1)
    # Records held while the database is unreachable; beyond this the oldest are dropped
    # (counted in llmproxy_ledger_dropped_total) rather than growing memory without bound.
    max_pending: int = Field(100_000, ge=1)


class BudgetConfig(Section):
    key_id: str = Field(min_length=1)
    period: Literal["day", "month"] = "day"
    limit_usd: float = Field(gt=0, allow_inf_nan=False)


class BudgetStoreConfig(Section):
    """Where budget spend and in-flight reservations live.

    `memory` is per process (one replica only); `redis` and `postgres` share the
    state across replicas. `on_failure` decides what a budgeted request does when
    the store is unreachable: `closed` rejects it (UNAVAILABLE), `open` lets it
    through unaccounted. Keys without a budget never touch the store.
    """

    backend: Literal["memory", "redis", "postgres"] = "memory"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    dsn: SecretStr = SecretStr("postgresql://127.0.0.1:5432/test")
    # Redis key prefix / PostgreSQL table prefix, so deployments can share a server.
    prefix: str = Field("llmproxy", pattern=SQL_NAME)
    # A reservation left by a replica that died mid-request is released after this long.
    reservation_ttl_s: float = Field(900, gt=0)
    on_failure: Literal["open", "closed"] = "closed"
