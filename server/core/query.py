"""The path of one query through the core: route, account, cache, execute.

Each stage wraps the event stream of the one inside it, so the order is read
top to bottom in `stream` and a stage that is switched off costs nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Protocol

from llmproxy.server.core.deployments import Deployment
from llmproxy.server.core.executor import Executor
from llmproxy.server.core.router import Router
from llmproxy.server.domain import CallContext, QueryEvent, QueryInput
from llmproxy.server.errors import LLMProxyError

EventStream = AsyncIterator[QueryEvent]


class CacheStage(Protocol):
    def stream(
        self, query: QueryInput, candidates: list[Deployment], produce: Callable[[], EventStream]
    ) -> EventStream:
        """Replay a cached answer, or call `produce()` and store what it streams."""


class AccountingStage(Protocol):
    def track(
        self, query: QueryInput, ctx: CallContext, candidates: list[Deployment], events: EventStream
    ) -> EventStream:
        """Check limits before `events` starts; price and record it however it ends."""

    def reject(self, query: QueryInput, ctx: CallContext, error: LLMProxyError) -> None:
        """Record a request that routing refused before any stage ran."""


class QueryService:
    def __init__(
        self,
        router: Router,
        executor: Executor,
        *,
        cache: CacheStage | None = None,
        accounting: AccountingStage | None = None,
    ) -> None:
        self.router = router
        self.executor = executor
        self.cache = cache
        self.accounting = accounting

    def stream(self, query: QueryInput, ctx: CallContext) -> EventStream:
        try:
            candidates = self.router.plan(query, ctx)
        except LLMProxyError as error:
            if self.accounting is not None:
                self.accounting.reject(query, ctx, error)
            raise
        produce = partial(self.executor.stream, candidates, query, ctx)
        events = self.cache.stream(query, candidates, produce) if self.cache else produce()
        if self.accounting is not None:
            events = self.accounting.track(query, ctx, candidates, events)
        return events
