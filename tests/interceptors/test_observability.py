"""Metrics scraped over HTTP after known traffic, and one access-log line per RPC."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.interceptors.conftest import key_entry, mock_settings
from tests.support.running import running_app, running_client

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def scrape(app) -> tuple[str, dict[tuple[str, frozenset], float]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{app.http_port}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def gateway(keys, logs):
    settings = mock_settings(
        auth={"enabled": True, "api_keys": [key_entry("team-a", keys["team-a"])]}
    )
    async with running_client(settings, api_key=keys["team-a"]) as (app, client):
        yield app, client


async def test_metrics_by_value_after_known_traffic(gateway, keys):
    app, client = gateway
    dones = [(await client.query(f"question {i}", model="fast")).done for i in range(3)]
    dones.append((await client.query("question", model="smart")).done)
    cached = [(await client.query("cache me", model="fast", temperature=0)).done for _ in range(2)]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.query("hi", model="no-such-model")
    parallel = [
        e
        async for e in client.parallel(
            pb.ParallelQueryRequest(query="hi", models=["fast", "smart"])
        )
    ]
    await client.status()
    async with AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}") as anonymous:
        with pytest.raises(grpc.aio.AioRpcError):
            await anonymous.status()

    text, samples = await scrape(app)
    fast_dones = [d for d in dones + cached if d.model == "fast"]
    fast_dones += [e.done for e in parallel if e.HasField("done") and e.done.model == "fast"]
    ok = {"provider": "mock", "code": "OK"}
    assert value(samples, "llmproxy_requests_total", model="fast", rpc="Query", **ok) == 5
    assert value(samples, "llmproxy_requests_total", model="smart", rpc="Query", **ok) == 1
    assert value(samples, "llmproxy_requests_total", model="fast", rpc="ParallelQuery", **ok) == 1
    assert value(samples, "llmproxy_requests_total", model="smart", rpc="ParallelQuery", **ok) == 1
    # An unknown model name is caller text: it is reported as "other", never as itself.
    assert (
        value(
            samples,
            "llmproxy_requests_total",
            model="other",
            provider="",
            rpc="Query",
            code="NOT_FOUND",
        )
        == 1
    )
    assert "no-such-model" not in text
    assert (
        value(
            samples,
            "llmproxy_requests_total",
            model="",
            provider="",
            rpc="Status",
            code="UNAUTHENTICATED",
        )
        == 1
    )
    assert value(samples, "llmproxy_auth_failures_total", cause="missing_credentials") == 1

    fast = {"model": "fast", "provider": "mock"}
    assert value(samples, "llmproxy_tokens_processed_total", type="input", **fast) == sum(
        d.metadata.input_tokens for d in fast_dones
    )
    assert value(samples, "llmproxy_tokens_processed_total", type="output", **fast) == sum(
        d.metadata.output_tokens for d in fast_dones
    )
    assert value(samples, "llmproxy_time_to_first_token_seconds_count", **fast) == 6
    assert value(samples, "llmproxy_request_duration_seconds_count", rpc="Query", **fast) == 5
    assert value(samples, "llmproxy_proxy_overhead_seconds_count", rpc="Query") == 6
    overhead_s = sum(d.metadata.proxy_overhead_us for d in dones + cached) / 1e6
    assert value(samples, "llmproxy_proxy_overhead_seconds_sum", rpc="Query") == pytest.approx(
        overhead_s
    )
    assert cached[1].cache_status == pb.CACHE_STATUS_HIT
    assert value(samples, "llmproxy_cache_hits_total", model="fast", kind="exact") == 1
    assert value(samples, "llmproxy_active_requests", rpc="Query") == 0
    assert value(samples, "llmproxy_model_availability", **fast) == 1
    assert value(samples, "llmproxy_circuit_state", **fast) == 0
    assert keys["team-a"] not in text


async def test_one_log_line_per_rpc_with_ids_and_no_content(gateway, logs, keys):
    _, client = gateway
    result = await client.query(
        "a private question", model="fast", metadata=[("traceparent", TRACEPARENT)]
    )
    await client.status()
    with pytest.raises(grpc.aio.AioRpcError):
        await client.query("hi", model="no-such-model", request_id="mine-1")
    lines = logs.access()
    assert [(e["rpc"], e["code"]) for e in lines] == [
        ("Query", "OK"),
        ("Status", "OK"),
        ("Query", "NOT_FOUND"),
    ]
    query = lines[0]
    md = result.done.metadata
    assert query["request_id"] == result.request_id == md.request_id
    assert query["trace_id"] == TRACEPARENT.split("-")[1]
    assert (query["key_id"], query["model"], query["provider"]) == ("team-a", "fast", "mock")
    assert (query["input_tokens"], query["output_tokens"]) == (md.input_tokens, md.output_tokens)
    assert query["latency_ms"] >= md.response_time_ms - 1
    assert lines[2]["request_id"] == "mine-1"
    assert "prompt" not in query and "answer" not in query
    logs.assert_no_secret(keys["team-a"], "a private question", result.text.strip())


async def test_content_is_logged_only_when_enabled(logs):
    settings = mock_settings(logging={"log_content": True})
    async with running_client(settings) as (_, client):
        result = await client.query("log this question", model="fast")
    (line,) = [e for e in logs.access() if e["rpc"] == "Query"]
    assert line["prompt"] == "log this question"
    assert line["answer"] == result.text


async def test_cancelled_stream_is_logged_and_counted(logs):
    slow = {
        "providers": [
            {"name": "mock", "type": "mock", "options": {"ttft_ms": 0, "tokens_per_s": 20}}
        ],
        "models": [{"name": "fast", "provider": "mock", "upstream_model": "mock-fast"}],
    }
    from tests.support.running import settings_for

    async with running_app(settings_for(slow)) as app:
        async with AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}") as client:
            call = client.stream(pb.QueryRequest(query="tell me a long story", model="fast"))
            async for event in call:
                if event.HasField("delta"):
                    call.cancel()
                    break
            for _ in range(100):
                if logs.access():
                    break
                import asyncio

                await asyncio.sleep(0.01)
        _, samples = await scrape(app)
    assert [e["code"] for e in logs.access()] == ["CANCELLED"]
    assert value(samples, "llmproxy_active_requests", rpc="Query") == 0
    assert (
        value(
            samples,
            "llmproxy_requests_total",
            model="fast",
            provider="mock",
            rpc="Query",
            code="CANCELLED",
        )
        == 1
    )
