"""The path of one query through the core: route, then execute, then account for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from llmproxy.server.core.executor import Executor
from llmproxy.server.core.router import Router
from llmproxy.server.domain import CallContext, QueryEvent, QueryInput


class QueryService:
    def __init__(self, router: Router, executor: Executor) -> None:
        self.router = router
        self.executor = executor

    async def stream(self, query: QueryInput, ctx: CallContext) -> AsyncIterator[QueryEvent]:
        candidates = self.router.plan(query, ctx)
        async for event in self.executor.stream(candidates, query, ctx):
            yield event
