"""Hand-made event streams and a recording ledger backend, for driving the stage directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from llmproxy.server.config.providers import ModelConfig, Price
from llmproxy.server.core.accounting.records import UsageAggregate, UsageFilter, UsageRecord
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CacheStatus,
    Completed,
    FinishReason,
    QueryEvent,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import UpstreamUnavailableError


def deployment(name: str, *, price: Price | None = None, **config) -> Deployment:
    return Deployment(ModelConfig(name=name, provider="p", price=price, **config), _Provider())


class _Provider:
    name = "p"


def completed(model: str, usage: Usage, cache: CacheStatus = CacheStatus.MISS) -> Completed:
    return Completed(
        model=model,
        provider="p",
        usage=usage,
        finish_reason=FinishReason.STOP,
        raw_finish_reason="stop",
        response_time_ms=5,
        time_to_first_token_ms=1,
        proxy_overhead_us=10,
        cache_status=cache,
    )


async def answer(
    model: str,
    words: list[str],
    usage: Usage,
    *,
    delay_s: float = 0.0,
    cache: CacheStatus = CacheStatus.MISS,
    calls: list[str] | None = None,
) -> AsyncIterator[QueryEvent]:
    if calls is not None:
        calls.append(model)
    if delay_s:
        await asyncio.sleep(delay_s)
    yield Started(model, "p")
    for word in words:
        yield TextDelta(word)
    yield completed(model, usage, cache)


async def broken(model: str, words: list[str]) -> AsyncIterator[QueryEvent]:
    """Streams `words`, then the upstream connection drops (or fails at once: no words)."""
    if words:
        yield Started(model, "p")
    for word in words:
        yield TextDelta(word)
    raise UpstreamUnavailableError("upstream reset", provider="p", status=502)


class ListLedger:
    """A LedgerBackend that keeps records in a list."""

    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.fail = False

    async def open(self) -> None:
        return None

    async def write(self, records: list[UsageRecord]) -> None:
        if self.fail:
            raise ConnectionError("database down")
        self.records.extend(records)

    async def aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        return []

    async def close(self) -> None:
        return None
