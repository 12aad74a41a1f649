"""Spans through a real server: the caller's trace continued, one child per upstream attempt,
and the attempt's trace context received by the fake upstream."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.conftest import openai_config
from tests.support.running import running_client, settings_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="module")
def exporter():
    """The process's tracer provider with an in-memory exporter (set once, as OTel allows)."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
async def traced(openai_upstream, exporter):
    config = openai_config(
        openai_upstream.base_url,
        ["ok", "500"],
        groups=[{"name": "g", "members": [{"model": "500"}], "fallback": ["ok"]}],
        resilience={"retries": {"max_attempts": 1}},
        tracing={"enabled": True},
    )
    exporter.clear()
    async with running_client(settings_for(config)) as (_, client):
        yield client, openai_upstream, exporter


async def finished_spans(exporter, count: int):
    """Wait for `count` spans including the server span (it ends last, after the stream)."""
    for _ in range(200):
        spans = exporter.get_finished_spans()
        if len(spans) >= count and any(s.kind is SpanKind.SERVER for s in spans):
            return spans
        await asyncio.sleep(0.01)
    raise AssertionError(f"expected {count} spans, got {exporter.get_finished_spans()}")


async def test_server_span_continues_the_caller_and_parents_each_attempt(traced, logs):
    client, upstream, exporter = traced
    result = await client.query("hi", model="g", metadata=[("traceparent", TRACEPARENT)])
    assert result.done.model == "ok"
    spans = await finished_spans(exporter, 3)
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
    attempts = sorted(
        (s for s in spans if s.kind is SpanKind.CLIENT),
        key=lambda s: s.attributes["llmproxy.attempt"],
    )
    assert server.name == "/llmproxy.v1.LLMProxy/Query"
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert [a.parent.span_id for a in attempts] == [server.context.span_id] * 2
    assert [a.attributes["llmproxy.attempt"] for a in attempts] == [1, 2]
    assert [a.attributes["llmproxy.model"] for a in attempts] == ["500", "ok"]
    assert [a.attributes["llmproxy.attempt.status"] for a in attempts] == [
        "UPSTREAM_UNAVAILABLE",
        "ok",
    ]
    assert attempts[0].status.status_code is StatusCode.ERROR
    assert attempts[1].attributes["gen_ai.usage.output_tokens"] == result.done.usage.output_tokens
    assert attempts[1].attributes["llmproxy.provider"] == "fake-openai"
    # Each upstream call carried its own attempt span as the parent.
    sent = [r.headers["traceparent"] for r in upstream.requests]
    assert sent == [f"00-{TRACE_ID}-{format(a.context.span_id, '016x')}-01" for a in attempts]
    query_lines = [e for e in logs.access() if e["rpc"] == "Query"]
    assert query_lines[-1]["trace_id"] == TRACE_ID


async def test_failed_rpc_records_its_code_on_the_server_span(traced):
    client, _, exporter = traced
    for model, code in [
        ("500", grpc.StatusCode.UNAVAILABLE),
        ("missing", grpc.StatusCode.NOT_FOUND),
    ]:
        exporter.clear()
        with pytest.raises(grpc.aio.AioRpcError):
            await client.query("hi", model=model)
        spans = await finished_spans(exporter, 1)
        (server,) = [s for s in spans if s.kind is SpanKind.SERVER]
        assert server.attributes["rpc.grpc.status_code"] == code.value[0]
        # OpenTelemetry's semantic conventions: only server-side faults are span errors.
        expected = StatusCode.ERROR if code is grpc.StatusCode.UNAVAILABLE else StatusCode.UNSET
        assert server.status.status_code is expected


async def test_no_spans_and_the_callers_traceparent_passes_through_when_off(
    openai_upstream, exporter
):
    exporter.clear()
    config = openai_config(openai_upstream.base_url, ["ok"])
    async with running_client(settings_for(config)) as (_, client):
        await client.query("hi", model="ok", metadata=[("traceparent", TRACEPARENT)])
    assert exporter.get_finished_spans() == ()
    assert openai_upstream.requests[-1].headers["traceparent"] == TRACEPARENT
