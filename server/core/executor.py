"""Runs a request against its candidate deployments: retries, fallback and hedging, all
before the first token; once text has reached the caller an attempt is never repeated."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from llmproxy.server.config.routing import HedgeConfig
from llmproxy.server.core import tokens
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.core.router import Plan
from llmproxy.server.core.routing.hedge import HedgeRace
from llmproxy.server.core.routing.observer import NULL_OBSERVER, RoutingObserver
from llmproxy.server.core.routing.policy import (
    counts_against,
    falls_back,
    remaining_after,
    retry_delay,
)
from llmproxy.server.domain import (
    Attempt,
    CallContext,
    ChatRequest,
    Completed,
    Finish,
    QueryEvent,
    QueryInput,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import (
    AdapterFailedError,
    DeadlineExceededError,
    UnavailableError,
    UpstreamError,
)
from llmproxy.server.observability import spans

log = logging.getLogger(__name__)

# Attempt.error_reason of an attempt cut short by us (hedge lost) or by the caller leaving.
CANCELLED = "CANCELLED"


class CircuitOpenError(Exception):
    """Internal: the deployment's circuit refused the attempt; the executor skips it."""


@dataclass(slots=True)
class _Run:
    """One request's bookkeeping across all of its attempts."""

    query: QueryInput
    ctx: CallContext
    started_at: float
    deadline: float | None
    attempts: list[Attempt] = field(default_factory=list)
    # Seconds spent inside upstream calls, for the proxy-overhead figure.
    upstream_s: float = 0.0
    # Whether the last attempt raced a hedge (so both candidates are used up).
    hedged: bool = False


class Executor:
    def __init__(
        self, observer: RoutingObserver = NULL_OBSERVER, *, rng: random.Random | None = None
    ) -> None:
        self.observer = observer
        self.rng = rng or random.Random()

    async def stream(
        self, candidates: list[Deployment], query: QueryInput, ctx: CallContext
    ) -> AsyncIterator[QueryEvent]:
        plan = candidates if isinstance(candidates, Plan) else _plan_of(candidates)
        resilience = plan.resilience
        started_at = ctx.started_at or time.perf_counter()
        deadline = None if ctx.deadline_s is None else started_at + ctx.deadline_s
        run = _Run(query, ctx, started_at, deadline)
        if deadline is not None and time.perf_counter() >= deadline:
            raise DeadlineExceededError("deadline passed before an upstream attempt could start")
        catalog = plan.catalog
        if catalog is not None:
            catalog.active += 1
        pending = list(plan)
        last_error: UpstreamError | None = None
        out_of_time = False
        try:
            while pending:
                deployment = pending.pop(0)
                tries, wait = 0, 0.0
                failed: UpstreamError | None = None  # this candidate's last failure
                refused = False  # whether its next attempt was refused for lack of time
                while True:
                    if not self._fits(run, deployment, wait):
                        out_of_time = refused = True
                        break
                    if wait:
                        await asyncio.sleep(wait)
                    tries += 1
                    run.hedged = False
                    try:
                        if plan.hedge is not None and pending:
                            events = self._hedged(deployment, pending, plan.hedge, run)
                        else:
                            events = self._attempt(deployment, run)
                        # aclosing: a consumer that stops early (aclose) must end the
                        # attempt now, not whenever the generator is collected.
                        async with aclosing(events):
                            async for event in events:
                                yield event
                        return
                    except CircuitOpenError:
                        break  # opened since the plan was made: skipped, nothing spent
                    except UpstreamError as error:
                        if error.metadata.get("streamed") == "true":
                            error.metadata.setdefault("attempts", str(len(run.attempts)))
                            raise
                        last_error = failed = error
                        delay = None if run.hedged else self._retry_delay(error, tries, plan)
                        if delay is None:
                            break
                        self.observer.retry(deployment.provider_name, deployment.name)
                        wait = delay
                if failed is not None:
                    if not falls_back(failed, resilience):
                        if refused:  # a retry would have followed, given the time
                            raise _ran_out_of_time(run, failed) from failed
                        failed.metadata.setdefault("attempts", str(len(run.attempts)))
                        raise failed
                    pending = remaining_after(failed, deployment, pending)
                    if pending:
                        self.observer.fallback(deployment.name, pending[0].name)
        finally:
            if catalog is not None:
                catalog.active -= 1
        # Time refused a retry or a candidate: more of it might have brought an answer, so
        # the caller (and the coalescer) must see the deadline, not the last failure.
        if out_of_time:
            if last_error is None:
                raise DeadlineExceededError(
                    "no candidate can finish before the deadline, judging by its observed latency"
                )
            raise _ran_out_of_time(run, last_error) from last_error
        if last_error is not None:
            last_error.metadata.setdefault("attempts", str(len(run.attempts)))
            raise last_error
        raise UnavailableError("no deployment is available for this request (circuits open)")

    def _retry_delay(self, error: UpstreamError, tries: int, plan: Plan) -> float | None:
        return retry_delay(error, tries, plan.resilience.retries, self.rng)

    @staticmethod
    def _fits(run: _Run, deployment: Deployment, wait: float = 0.0) -> bool:
        """Never start an attempt that, by its observed latency, ends after the deadline."""
        if run.deadline is None:
            return True
        expected = deployment.stats.expected_latency_s()
        return time.perf_counter() + wait + expected < run.deadline

    async def _hedged(
        self,
        primary: Deployment,
        pending: list[Deployment],
        hedge: HedgeConfig,
        run: _Run,
    ) -> AsyncIterator[QueryEvent]:
        after_s = _hedge_after(primary, hedge)
        if after_s is None:
            async for event in self._attempt(primary, run):
                yield event
            return
        racing = [primary]

        def start_backup() -> AsyncIterator[QueryEvent] | None:
            # The backup leaves `pending`: whatever happens, it is not tried again.
            while pending:
                backup = pending.pop(0)
                if self._fits(run, backup) and backup.breaker.available():
                    racing.append(backup)
                    run.hedged = True
                    self.observer.hedge(backup.provider_name, backup.name)
                    return self._attempt(backup, run)
            return None

        race = HedgeRace(self._attempt(primary, run), start_backup, after_s)
        async with aclosing(race.events()) as events:
            async for event in events:
                if type(event) is Completed:
                    # The winner may have finished before the loser's cancellation was recorded.
                    event.attempts = list(run.attempts)
                    if race.cancelled:
                        # The cancelled attempt had already sent the prompt: count its input too.
                        lost = racing[race.cancelled[0]]
                        extra = tokens.count_messages(lost.config.upstream, run.query.messages)
                        event.usage = Usage(
                            event.usage.input_tokens + extra,
                            event.usage.output_tokens,
                            event.usage.cached_input_tokens,
                            estimated=True,
                        )
                yield event

    async def _attempt(self, deployment: Deployment, run: _Run) -> AsyncIterator[QueryEvent]:
        """One upstream call, if the deployment's circuit lets it through.

        The breaker is acquired here, when the attempt really starts (a hedge
        task may be cancelled before it ever runs). From then on every way out
        records the outcome once: success, failure, or cancelled (caller gone,
        deadline, hedge lost), which releases the breaker untouched. A bug in the
        adapter (any other Exception) is a failure too, not a cancellation.
        """
        if not deployment.breaker.acquire():
            raise CircuitOpenError
        query, ctx = run.query, run.ctx
        # A child of the RPC's server span (None when not tracing); upstream continues it.
        span = spans.start_attempt(
            deployment.name,
            deployment.provider_name,
            deployment.config.upstream,
            len(run.attempts) + 1,
        )
        request = ChatRequest(
            model=deployment.config.upstream,
            messages=query.messages,
            params=query.params,
            request_id=query.request_id,
            headers=spans.trace_headers(span, ctx.traceparent),
            max_output_tokens=deployment.config.max_output_tokens,
        )
        stats = deployment.stats
        t0 = time.perf_counter()
        first_token_at: float | None = None
        finish: Finish | None = None
        parts: list[str] = []
        # Time the caller's side held control between our yields (sending each message
        # downstream): proxy time, not upstream time, though it falls inside the stream.
        downstream_s = 0.0
        settled = False
        stats.in_flight += 1
        try:
            async with aclosing(deployment.provider.stream(request)) as upstream:
                async for event in upstream:
                    if type(event) is TextDelta:
                        handed_off = time.perf_counter()
                        if first_token_at is None:
                            first_token_at = handed_off
                            yield Started(deployment.name, deployment.provider_name)
                            # Sending the start event took a round trip to the caller: text
                            # that arrived meanwhile goes with the first delta, not after it.
                            if event.more is not None:
                                event = TextDelta(event.text + event.more())
                        parts.append(event.text)
                        yield event
                        downstream_s += time.perf_counter() - handed_off
                    else:
                        finish = event  # type: ignore[assignment]
                if finish is None:  # a broken adapter: handled below like any other bug
                    raise RuntimeError("provider stream ended without a Finish event")
            upstream_done = time.perf_counter() - downstream_s
            settled = True
            stats.in_flight -= 1
        except UpstreamError as error:
            settled = True
            self._failed(deployment, run, span, error, t0, first_token_at is not None)
            raise
        except Exception as bug:
            # Not CancelledError or GeneratorExit (BaseExceptions): those stay cancellations.
            settled = True
            error = _adapter_failed(deployment, query, bug)
            self._failed(deployment, run, span, error, t0, first_token_at is not None)
            # from None: the stack is logged once, above; the caller gets the generic error.
            raise error from None
        finally:
            if not settled:
                spans.end_attempt(span, error_reason=CANCELLED)
                stats.in_flight -= 1
                deployment.breaker.release()
                spent_ms = int((time.perf_counter() - t0) * 1000)
                run.attempts.append(
                    Attempt(deployment.name, deployment.provider_name, CANCELLED, spent_ms)
                )
        # No text: Started goes out only after the outcome is recorded, so a caller
        # leaving at that yield cannot strand the breaker's half-open probe.
        silent = first_token_at is None
        if first_token_at is None:
            first_token_at = upstream_done
        assert finish is not None  # checked inside the try, where a failure is recorded
        usage = finish.usage or self._estimate_usage(deployment, query, "".join(parts))
        spans.end_attempt(span, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens)
        latency_ms = (upstream_done - t0) * 1000
        stats.record_success(latency_ms, (first_token_at - t0) * 1000)
        deployment.breaker.record_success()
        run.attempts.append(Attempt(deployment.name, deployment.provider_name, "", int(latency_ms)))
        run.upstream_s += upstream_done - t0
        if silent:
            yield Started(deployment.name, deployment.provider_name)
        now = time.perf_counter()
        started_at = run.started_at
        yield Completed(
            model=deployment.name,
            provider=deployment.provider_name,
            usage=usage,
            finish_reason=finish.reason,
            raw_finish_reason=finish.raw_reason,
            response_time_ms=int((now - started_at) * 1000),
            time_to_first_token_ms=int((first_token_at - started_at) * 1000),
            proxy_overhead_us=max(int((now - started_at - run.upstream_s) * 1_000_000), 0),
            attempts=list(run.attempts),
        )

    def _failed(
        self,
        deployment: Deployment,
        run: _Run,
        span: spans.Span | None,
        error: UpstreamError,
        t0: float,
        streamed: bool,
    ) -> None:
        """Record a failed attempt once: stats, breaker, observer, span and attempt list."""
        deployment.stats.in_flight -= 1
        spent = time.perf_counter() - t0
        run.upstream_s += spent
        run.attempts.append(
            Attempt(deployment.name, deployment.provider_name, error.reason, int(spent * 1000))
        )
        deployment.stats.record_failure(error.reason)
        if counts_against(error):
            deployment.breaker.record_failure()
        else:
            deployment.breaker.release()
        self.observer.upstream_error(deployment.provider_name, deployment.name, error.reason)
        spans.end_attempt(span, error_reason=error.reason)
        if streamed:
            error.metadata["streamed"] = "true"

    @staticmethod
    def _estimate_usage(deployment: Deployment, query: QueryInput, text: str) -> Usage:
        model = deployment.config.upstream
        return Usage(
            input_tokens=tokens.count_messages(model, query.messages),
            output_tokens=tokens.count_text(model, text),
            estimated=True,
        )


def _adapter_failed(deployment: Deployment, query: QueryInput, bug: Exception) -> UpstreamError:
    """A provider's unexpected exception as an upstream failure: the stack goes to the log,
    the caller gets a generic message (the exception's text may hold a key or a URL)."""
    log.error(
        "%s: the adapter failed",
        deployment.provider_name,
        exc_info=bug,
        extra={
            "request_id": query.request_id,
            "model": deployment.name,
            "provider": deployment.provider_name,
        },
    )
    return AdapterFailedError(
        f"{deployment.provider_name}: the adapter failed", provider=deployment.provider_name
    )


def _ran_out_of_time(run: _Run, last: UpstreamError) -> DeadlineExceededError:
    """The deadline, not `last`, stopped the run: name only the last failure's reason
    (its message stays out: the upstream's own text has no place in ours)."""
    attempts = len(run.attempts)
    return DeadlineExceededError(
        f"ran out of time after {attempts} attempt{'s' if attempts != 1 else ''}: the next "
        f"retry or fallback could not finish before the deadline "
        f"(last upstream failure: {last.reason})",
        metadata={"attempts": str(attempts), "last_reason": last.reason},
    )


def _plan_of(candidates: list[Deployment]) -> Plan:
    plan = Plan()
    plan.extend(candidates)
    return plan


def _hedge_after(primary: Deployment, hedge: HedgeConfig) -> float | None:
    """Seconds to wait for the first token before hedging; None: not hedging (yet)."""
    stats = primary.stats
    if hedge.after_p95 and stats.samples >= hedge.min_samples:
        return stats.ttft_p95_ms() / 1000.0
    return None if hedge.after_ms is None else hedge.after_ms / 1000.0
