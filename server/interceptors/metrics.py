"""Prometheus figures per RPC: requests by code, durations, TTFT, tokens, cache hits, overhead.

A stream is counted when it ends, from the done events that passed through it
(one outcome per model for ParallelQuery); a Status response also refreshes the
per-model availability and circuit-state gauges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc

from llmproxy.server.interceptors.base import CallInterceptor
from llmproxy.server.interceptors.call import OK, CallInfo
from llmproxy.server.observability.metrics import Metrics
from llmproxy.v1 import llmproxy_pb2 as pb

_CIRCUITS = {
    pb.CIRCUIT_STATE_CLOSED: "closed",
    pb.CIRCUIT_STATE_HALF_OPEN: "half_open",
    pb.CIRCUIT_STATE_OPEN: "open",
}


@dataclass(slots=True, frozen=True)
class _Series:
    """The label-bound children for one (rpc, model, provider, code): looked up once, reused."""

    requests: Any
    duration: Any
    input_tokens: Any
    output_tokens: Any
    ttft: Any
    overhead: Any
    cache_exact: Any
    cache_semantic: Any


class MetricsInterceptor(CallInterceptor):
    observes_failures = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics
        # Bounded: every label value is bounded (see Metrics).
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        self._active: dict[str, Any] = {}

    def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        active = self._active.get(call.rpc)
        if active is None:
            active = self._active[call.rpc] = self.metrics.active_requests.labels(call.rpc)
        active.inc()

    def response(self, call: CallInfo, message: Any) -> None:
        if isinstance(message, pb.StatusResponse):
            for m in message.models:
                self.metrics.availability(m.name, m.provider, m.available)
                state = _CIRCUITS.get(m.circuit_state)
                if state is not None:
                    self.metrics.circuit(m.name, m.provider, state)

    def end(self, call: CallInfo) -> None:
        self._active[call.rpc].dec()
        for o in call.outcomes:
            series = self._series_for(call.rpc, o.model, o.provider, o.code)
            series.requests.inc()
            series.duration.observe(o.duration_s)
            if o.code != OK or not o.provider:
                continue
            if o.input_tokens:
                series.input_tokens.inc(o.input_tokens)
            if o.output_tokens:
                series.output_tokens.inc(o.output_tokens)
            if o.ttft_s is not None:
                series.ttft.observe(o.ttft_s)
            if o.overhead_us is not None:
                series.overhead.observe(o.overhead_us / 1e6)
            if o.cache_status == pb.CACHE_STATUS_HIT:
                series.cache_exact.inc()
            elif o.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT:
                series.cache_semantic.inc()

    def _series_for(self, rpc: str, model: str, provider: str, code: str) -> _Series:
        m = self.metrics
        # Bound first: a failed call's model is whatever the caller sent.
        model, provider = m.model(model), m.provider(provider)
        key = (rpc, model, provider, code)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(
                m.requests.labels(model, provider, rpc, code),
                m.request_duration.labels(rpc, model, provider),
                m.tokens.labels(model, provider, "input"),
                m.tokens.labels(model, provider, "output"),
                m.time_to_first_token.labels(model, provider),
                m.proxy_overhead.labels(rpc),
                m.cache_hits.labels(model, "exact"),
                m.cache_hits.labels(model, "semantic"),
            )
        return series
