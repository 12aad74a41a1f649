"""Per-upstream-attempt spans: children of the RPC's server span, skipped when nothing traces.

Uses only the OpenTelemetry API: when tracing is off there is no recording span
to hang a child on, so `start_attempt` returns None after one context lookup and
the caller's own `traceparent` (if any) is passed upstream unchanged.
"""

from __future__ import annotations

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

_tracer = trace.get_tracer("llmproxy.upstream")


def start_attempt(model: str, provider: str, upstream_model: str, attempt: int) -> Span | None:
    """A client span for one upstream call, or None when the RPC is not being traced."""
    if not trace.get_current_span().is_recording():
        return None
    return _tracer.start_span(
        f"upstream {provider}",
        kind=SpanKind.CLIENT,
        attributes={
            "llmproxy.model": model,
            "llmproxy.provider": provider,
            "llmproxy.attempt": attempt,
            "gen_ai.system": provider,
            "gen_ai.request.model": upstream_model,
        },
    )


def trace_headers(span: Span | None, traceparent: str) -> tuple[tuple[str, str], ...]:
    """W3C trace context for the upstream request: the attempt span's, else the caller's."""
    if span is None:
        return (("traceparent", traceparent),) if traceparent else ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def end_attempt(
    span: Span | None,
    *,
    error_reason: str = "",
    input_tokens: int | None = None,
    output_tokens: int | None = None,
) -> None:
    if span is None:
        return
    span.set_attribute("llmproxy.attempt.status", error_reason or "ok")
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if error_reason:
        span.set_attribute("error.type", error_reason)
        span.set_status(Status(StatusCode.ERROR, error_reason))
    span.end()
