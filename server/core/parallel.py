"""ParallelQuery's fan-out: every model streams at once; events interleave as they arrive."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from llmproxy.server.core.query import QueryService
from llmproxy.server.domain import CallContext, Completed, QueryEvent, QueryInput
from llmproxy.server.errors import LLMProxyError


@dataclass(slots=True)
class ModelFailed:
    """One model's failure, reported in-band; the other models go on."""

    error: LLMProxyError


@dataclass(slots=True)
class Summary:
    total_time_ms: int
    succeeded: int
    failed: int
    total_cost_usd: float


ParallelEvent = tuple[str, QueryEvent | ModelFailed] | Summary

_DONE = object()
log = logging.getLogger(__name__)


class ParallelQueryService:
    def __init__(self, queries: QueryService) -> None:
        self.queries = queries

    async def stream(
        self, models: list[str], query: QueryInput, ctx: CallContext
    ) -> AsyncIterator[ParallelEvent]:
        """Yield (model, event) pairs as they arrive, then one Summary.

        Leaving the generator early (caller cancelled, deadline) cancels every
        model's upstream call through the task group.
        """
        started = ctx.started_at or time.perf_counter()
        queue: asyncio.Queue = asyncio.Queue()
        succeeded = failed = 0
        cost = 0.0

        async def run(model: str) -> None:
            sub = replace(query, model=model, request_id=f"{query.request_id}:{model}")
            try:
                async for event in self.queries.stream(sub, ctx):
                    await queue.put((model, event))
            except LLMProxyError as error:
                await queue.put((model, ModelFailed(error)))
            except Exception:
                log.exception("parallel query for %s failed", model)
                await queue.put((model, ModelFailed(LLMProxyError("internal error"))))
            finally:
                await queue.put(_DONE)

        # Tasks, not a TaskGroup: a generator must not yield inside a task group's scope.
        tasks = [asyncio.create_task(run(model)) for model in models]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                    continue
                event = item[1]
                if isinstance(event, ModelFailed):
                    failed += 1
                elif isinstance(event, Completed):
                    succeeded += 1
                    cost += event.cost_usd
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        yield Summary(int((time.perf_counter() - started) * 1000), succeeded, failed, cost)
