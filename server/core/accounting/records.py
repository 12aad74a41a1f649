"""The usage record every request leaves in the ledger, and the aggregates read back from it."""

from __future__ import annotations

import operator
from dataclasses import dataclass

OK = "OK"
CACHE_HITS = ("hit", "semantic_hit")


@dataclass(slots=True)
class UsageRecord:
    """One request's outcome. Token counts are what was billed (0 when nothing was)."""

    ts: float  # time.time() when the request ended
    request_id: str
    key_id: str
    model: str
    provider: str
    # "OK", or the error reason: UPSTREAM_UNAVAILABLE, CANCELLED, BUDGET_EXCEEDED, ...
    status: str
    cache_status: str  # a CacheStatus value: miss, hit, semantic_hit, bypass, refresh
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    # True when the counts are ours (tokenizer), not the provider's.
    estimated: bool = False


COLUMNS: tuple[str, ...] = tuple(UsageRecord.__dataclass_fields__)
# record -> tuple in COLUMNS order, without dataclasses.astuple's deep copy.
as_row = operator.attrgetter(*COLUMNS)


@dataclass(slots=True, frozen=True)
class UsageFilter:
    """Records with start <= ts < end (epoch seconds), optionally for one key and one model."""

    start: float
    end: float
    key_id: str = ""
    model: str = ""


@dataclass(slots=True)
class UsageAggregate:
    """Everything one key spent on one model on one UTC day."""

    day: str  # YYYY-MM-DD, UTC
    key_id: str
    model: str
    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
