"""Prometheus figures per RPC: requests by code, durations, TTFT, tokens, cache hits, overhead.

A stream is counted when it ends, from the done events that passed through it
(one outcome per model for ParallelQuery); a Status response also refreshes the
per-model availability and circuit-state gauges.
"""

from __future__ import annotations

from typing import Any

import grpc

from llmproxy.server.interceptors.call import OK, CallInfo, CallInterceptor
from llmproxy.server.observability.metrics import Metrics
from llmproxy.v1 import llmproxy_pb2 as pb

_CACHE_KINDS = {pb.CACHE_STATUS_HIT: "exact", pb.CACHE_STATUS_SEMANTIC_HIT: "semantic"}
_CIRCUITS = {
    pb.CIRCUIT_STATE_CLOSED: "closed",
    pb.CIRCUIT_STATE_HALF_OPEN: "half_open",
    pb.CIRCUIT_STATE_OPEN: "open",
}


class MetricsInterceptor(CallInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    async def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        self.metrics.active_requests.labels(call.rpc).inc()

    def response(self, call: CallInfo, message: Any) -> None:
        if isinstance(message, pb.StatusResponse):
            for m in message.models:
                self.metrics.availability(m.name, m.provider, m.available)
                state = _CIRCUITS.get(m.circuit_state)
                if state is not None:
                    self.metrics.circuit(m.name, m.provider, state)

    def end(self, call: CallInfo) -> None:
        m = self.metrics
        rpc = call.rpc
        m.active_requests.labels(rpc).dec()
        for o in call.outcomes:
            model, provider = m.model(o.model), m.provider(o.provider)
            m.requests.labels(model, provider, rpc, o.code).inc()
            m.request_duration.labels(rpc, model, provider).observe(o.duration_s)
            if o.code != OK or not provider:
                continue
            if o.input_tokens:
                m.tokens.labels(model, provider, "input").inc(o.input_tokens)
            if o.output_tokens:
                m.tokens.labels(model, provider, "output").inc(o.output_tokens)
            if o.ttft_s is not None:
                m.time_to_first_token.labels(model, provider).observe(o.ttft_s)
            if o.overhead_us is not None:
                m.proxy_overhead.labels(rpc).observe(o.overhead_us / 1e6)
            kind = _CACHE_KINDS.get(o.cache_status)
            if kind is not None:
                m.cache_hits.labels(model, kind).inc()
