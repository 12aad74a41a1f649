"""One structured log line per RPC: ids, caller, model, status, latency and tokens.

The caller appears by key id only, never by key or token. Prompts and answers are
logged only when `logging.log_content` is on; otherwise they are never collected.
Health checks are logged at DEBUG so probes do not drown the log.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from opentelemetry import trace

from llmproxy.server.interceptors.base import CallInterceptor
from llmproxy.server.interceptors.call import CallInfo
from llmproxy.server.logs import log_fields

log = logging.getLogger("llmproxy.access")

_QUIET_SERVICES = frozenset({"grpc.health.v1.Health"})


def trace_id_of(traceparent: str) -> str:
    """The trace id of a W3C `traceparent` (version-traceid-spanid-flags), or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def current_trace_id(context: grpc.aio.ServicerContext) -> str:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        return format(span.trace_id, "032x")
    for key, value in context.invocation_metadata() or ():
        if key == "traceparent" and isinstance(value, str):
            return trace_id_of(value)
    return ""


class AccessLogInterceptor(CallInterceptor):
    observes_failures = True

    def __init__(self, *, log_content: bool = False) -> None:
        super().__init__()
        self.log_content = log_content

    def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        # Read now: at the end the span may be closed and the context gone.
        call.trace_id = current_trace_id(context)
        if self.log_content and request is not None and call.requested_model:
            call.prompt = _prompt_of(request)
            call.answer = []

    def end(self, call: CallInfo) -> None:
        level = logging.DEBUG if call.service in _QUIET_SERVICES else logging.INFO
        if not log.isEnabledFor(level):
            return
        outcomes = call.outcomes
        entry: dict[str, Any] = {
            "rpc": call.rpc,
            "service": call.service,
            "request_id": call.request_id,
            "trace_id": call.trace_id,
            "key_id": call.key_id,
            "model": ",".join(o.model for o in outcomes if o.model),
            "provider": ",".join(o.provider for o in outcomes if o.provider),
            "code": call.code,
            "latency_ms": round(call.duration_s * 1000, 3),
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
        }
        if call.requested_model:
            entry["requested_model"] = call.requested_model
            ttft = [o.ttft_s for o in outcomes if o.ttft_s is not None]
            if ttft:
                entry["ttft_ms"] = round(min(ttft) * 1000, 3)
        if call.prompt is not None:
            entry["prompt"] = call.prompt
            entry["answer"] = "".join(call.answer or ())
        log_fields(log, level, "rpc", entry)


def _prompt_of(request: Any) -> str:
    if request.query:
        return request.query
    return "\n".join(m.content for m in request.messages)
