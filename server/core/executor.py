"""Runs a request against its candidate deployments, falling back before the first token."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from llmproxy.server.core import tokens
from llmproxy.server.core.deployments import Deployment
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
    DeadlineExceededError,
    LLMProxyError,
    UnavailableError,
    UpstreamContextTooLongError,
    UpstreamError,
    UpstreamInvalidRequestError,
)


def may_fall_back(error: LLMProxyError) -> bool:
    """Another deployment may succeed where this one failed, unless the caller's input is bad.

    A context-too-long error does fall back: a larger-context model may fit.
    """
    if isinstance(error, UpstreamContextTooLongError):
        return True
    return isinstance(error, UpstreamError) and not isinstance(error, UpstreamInvalidRequestError)


class Executor:
    async def stream(
        self, candidates: list[Deployment], query: QueryInput, ctx: CallContext
    ) -> AsyncIterator[QueryEvent]:
        started_at = ctx.started_at or time.perf_counter()
        deadline = None if ctx.deadline_s is None else started_at + ctx.deadline_s
        attempts: list[Attempt] = []
        # Seconds spent inside upstream calls, for the proxy-overhead figure.
        upstream_s: list[float] = []
        last_error: LLMProxyError | None = None
        for deployment in candidates:
            if deadline is not None and time.perf_counter() >= deadline:
                raise DeadlineExceededError(
                    "deadline passed before an upstream attempt could start"
                )
            try:
                async for event in self._attempt(
                    deployment, query, ctx, started_at, attempts, upstream_s
                ):
                    yield event
                return
            except UpstreamError as error:
                if not may_fall_back(error) or error.metadata.get("streamed") == "true":
                    error.metadata.setdefault("attempts", str(len(attempts)))
                    raise
                last_error = error
        if last_error is None:
            raise UnavailableError("no deployment is available for this request")
        last_error.metadata.setdefault("attempts", str(len(attempts)))
        raise last_error

    async def _attempt(
        self,
        deployment: Deployment,
        query: QueryInput,
        ctx: CallContext,
        started_at: float,
        attempts: list[Attempt],
        upstream_s: list[float],
    ) -> AsyncIterator[QueryEvent]:
        request = ChatRequest(
            model=deployment.config.upstream,
            messages=query.messages,
            params=query.params,
            request_id=query.request_id,
            headers=(("traceparent", ctx.traceparent),) if ctx.traceparent else (),
        )
        stats = deployment.stats
        t0 = time.perf_counter()
        first_token_at: float | None = None
        finish: Finish | None = None
        parts: list[str] = []
        stats.in_flight += 1
        try:
            async for event in deployment.provider.stream(request):
                if type(event) is TextDelta:
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                        yield Started(deployment.name, deployment.provider_name)
                    parts.append(event.text)
                    yield event
                else:
                    finish = event  # type: ignore[assignment]
        except UpstreamError as error:
            spent = time.perf_counter() - t0
            upstream_s.append(spent)
            attempts.append(
                Attempt(deployment.name, deployment.provider_name, error.reason, int(spent * 1000))
            )
            stats.record_failure(error.reason)
            if first_token_at is not None:
                error.metadata["streamed"] = "true"
            raise
        finally:
            stats.in_flight -= 1
        upstream_done = time.perf_counter()
        if first_token_at is None:
            first_token_at = upstream_done
            yield Started(deployment.name, deployment.provider_name)
        assert finish is not None, "provider stream ended without a Finish event"
        usage = finish.usage or self._estimate_usage(deployment, query, "".join(parts))
        latency_ms = (upstream_done - t0) * 1000
        ttft_ms = (first_token_at - t0) * 1000
        stats.record_success(latency_ms, ttft_ms)
        attempts.append(Attempt(deployment.name, deployment.provider_name, "", int(latency_ms)))
        upstream_s.append(upstream_done - t0)
        now = time.perf_counter()
        yield Completed(
            model=deployment.name,
            provider=deployment.provider_name,
            usage=usage,
            finish_reason=finish.reason,
            raw_finish_reason=finish.raw_reason,
            response_time_ms=int((now - started_at) * 1000),
            time_to_first_token_ms=int((first_token_at - started_at) * 1000),
            proxy_overhead_us=max(int((now - started_at - sum(upstream_s)) * 1_000_000), 0),
            attempts=list(attempts),
        )

    @staticmethod
    def _estimate_usage(deployment: Deployment, query: QueryInput, text: str) -> Usage:
        model = deployment.config.upstream
        return Usage(
            input_tokens=tokens.count_messages(model, query.messages),
            output_tokens=tokens.count_text(model, text),
            estimated=True,
        )
