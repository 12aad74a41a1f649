"""The AccountingStage of the query path: limits before the upstream call, cost and a record after.

Before the first event: drop candidates whose context window cannot hold the
request (reject when none can) and reserve the worst-case cost against the
caller's budgets. While streaming: pass events through untouched. At the end,
however it comes (Completed, an error, the caller cancelling): price the answer,
settle or release the reservation, and enqueue exactly one ledger record.
Budget settles run as tasks and the ledger write is an append, so nothing here
waits on I/O after the answer is complete.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from llmproxy.server.core import tokens
from llmproxy.server.core.accounting.budgets import Budgets, Reservation
from llmproxy.server.core.accounting.ledger import LedgerWriter
from llmproxy.server.core.accounting.preflight import (
    PromptTokens,
    filter_fitting,
    worst_case_cost,
)
from llmproxy.server.core.accounting.pricing import answer_cost, cost_of
from llmproxy.server.core.accounting.records import OK, UsageRecord
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CacheMode,
    CacheStatus,
    CallContext,
    Completed,
    QueryEvent,
    QueryInput,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import LLMProxyError

_FAILED_CACHE_STATUS = {
    CacheMode.DEFAULT: CacheStatus.MISS.value,
    CacheMode.BYPASS: CacheStatus.BYPASS.value,
    CacheMode.REFRESH: CacheStatus.REFRESH.value,
}


class UsageAccounting:
    def __init__(
        self,
        *,
        budgets: Budgets | None = None,
        ledger: LedgerWriter | None = None,
    ) -> None:
        self.budgets = budgets
        self.ledger = ledger
        # Told each time a request's record is enqueued, so the API layer can record
        # the requests refused before they got here (and only those): see `refuse`.
        self.on_record: Callable[[], None] | None = None

    async def track(
        self,
        query: QueryInput,
        ctx: CallContext,
        candidates: list[Deployment],
        events: AsyncIterator[QueryEvent],
    ) -> AsyncIterator[QueryEvent]:
        started = ctx.started_at or time.perf_counter()
        prompt = PromptTokens(query)
        reservation: Reservation | None = None
        try:
            filter_fitting(query, candidates, prompt)
            budgets = self.budgets
            if budgets is not None and budgets.applies_to(ctx.key_id):
                estimate = worst_case_cost(query, candidates, prompt)
                reservation = await budgets.reserve(ctx.key_id, estimate, ctx.deadline_s)
        except BaseException as error:
            self._fail(query, ctx, candidates, started, error, None, [], prompt)
            raise
        parts: list[str] = []  # kept only to bill a stream that fails or is cancelled
        serving: Started | None = None
        done = False
        try:
            async for event in events:
                kind = type(event)
                if kind is TextDelta:
                    parts.append(event.text)  # type: ignore[union-attr]
                elif kind is Completed:
                    self._complete(query, ctx, candidates, event, reservation)  # type: ignore[arg-type]
                    done = True
                elif kind is Started:
                    serving = event  # type: ignore[assignment]
                yield event
        except BaseException as error:  # GeneratorExit and CancelledError included
            if not done:
                self._settle(
                    reservation,
                    self._fail(query, ctx, candidates, started, error, serving, parts, prompt),
                )
            raise
        if not done:  # a stream that ended without Completed is a bug upstream of us
            self._settle(
                reservation,
                self._fail(query, ctx, candidates, started, None, serving, parts, prompt),
            )

    def _complete(
        self,
        query: QueryInput,
        ctx: CallContext,
        candidates: list[Deployment],
        event: Completed,
        reservation: Reservation | None,
    ) -> None:
        cost = event.cost_usd = answer_cost(event, candidates)
        self._settle(reservation, cost)
        if self.ledger is None:
            return
        usage = event.usage
        self.ledger.enqueue(
            UsageRecord(
                time.time(),
                query.request_id,
                ctx.key_id,
                event.model,
                event.provider,
                OK,
                event.cache_status.value,
                usage.input_tokens,
                usage.output_tokens,
                usage.cached_input_tokens,
                cost,
                float(event.response_time_ms),
                usage.estimated,
            )
        )
        if self.on_record is not None:
            self.on_record()

    def reject(self, query: QueryInput, ctx: CallContext, error: LLMProxyError) -> None:
        """Record a request refused before any stage ran (unknown model, every circuit open)."""
        started = ctx.started_at or time.perf_counter()
        self._fail(query, ctx, [], started, error, None, [], PromptTokens(query))

    def _fail(
        self,
        query: QueryInput,
        ctx: CallContext,
        candidates: list[Deployment],
        started: float,
        error: BaseException | None,
        serving: Started | None,
        parts: list[str],
        prompt: PromptTokens,
    ) -> float:
        """Record a request that did not complete; returns what it cost (0 before any token).

        Tokens already streamed were generated, and providers bill them, so a stream
        cut off mid-way is charged for the prompt and the text the caller received
        (counted locally, flagged estimated). That also keeps a caller from dodging
        a budget by cancelling just before the end.
        """
        now = time.perf_counter()
        deployment = _serving_deployment(candidates, serving)
        usage, cost = Usage(), 0.0
        if parts and deployment is not None:
            model = deployment.config.upstream
            usage = Usage(prompt.count(deployment), tokens.count_text(model, "".join(parts)))
            usage.estimated = True
            cost = cost_of(usage, deployment.config.price)
        if self.ledger is not None:
            if serving is not None:
                model_name, provider = serving.model, serving.provider
            elif deployment is not None:
                model_name, provider = deployment.name, deployment.provider_name
            else:
                model_name, provider = query.model, ""
            self.ledger.enqueue(
                UsageRecord(
                    time.time(),
                    query.request_id,
                    ctx.key_id,
                    model_name,
                    provider,
                    _status(error, ctx, started, now),
                    _FAILED_CACHE_STATUS.get(query.cache.mode, CacheStatus.MISS.value),
                    usage.input_tokens,
                    usage.output_tokens,
                    0,
                    cost,
                    (now - started) * 1000,
                    usage.estimated,
                )
            )
            if self.on_record is not None:
                self.on_record()
        return cost

    def refuse(
        self, request_id: str, key_id: str, model: str, reason: str, latency_ms: float
    ) -> None:
        """Record a request refused before the query path saw it (auth, rate limits,
        invalid input): nothing was generated, so no tokens and no cost."""
        if self.ledger is not None:
            self.ledger.enqueue(
                UsageRecord(
                    time.time(),
                    request_id,
                    key_id,
                    model,
                    "",
                    reason,
                    CacheStatus.MISS.value,
                    latency_ms=latency_ms,
                )
            )

    def _settle(self, reservation: Reservation | None, cost: float) -> None:
        """Settle off the request's path, so a cancelled request still releases."""
        if reservation is not None and self.budgets is not None:
            self.budgets.settle_soon(reservation, cost)

    async def drain(self) -> None:
        """Wait for every pending settle (App.stop, after the server has drained)."""
        if self.budgets is not None:
            await self.budgets.drain()


def _serving_deployment(candidates: list[Deployment], serving: Started | None) -> Deployment | None:
    """The deployment that streamed (or, before any token, the first one routed to)."""
    if serving is not None:
        for d in candidates:
            if d.name == serving.model:
                return d
    return candidates[0] if candidates else None


def _status(error: BaseException | None, ctx: CallContext, started: float, now: float) -> str:
    if error is None:
        return "INCOMPLETE"
    if isinstance(error, LLMProxyError):
        return error.reason
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        if ctx.deadline_s is not None and now - started >= ctx.deadline_s - 0.005:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"
    return "INTERNAL"
