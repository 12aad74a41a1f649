"""Retries, fallback, deadlines and circuit breakers end to end: gRPC client -> gateway ->
scripted upstreams on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import grpc
import pytest

from llmproxy.client.client import build_query_request
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.fakes.openai_fake import REPLY
from tests.routing.scripted import HANG, die, fail, gateway, ok


def group(*members: str, strategy: str = "priority", **extra) -> list[dict]:
    return [
        {"name": "g", "strategy": strategy, "members": [{"model": m} for m in members], **extra}
    ]


def attempts(done: pb.StreamDone) -> list[tuple[str, str]]:
    return [(a.model, a.error_reason) for a in done.attempts]


async def test_fallback_follows_the_group_order_and_reports_every_attempt(upstream):
    upstream.script("a", fail(503))
    upstream.script("b", fail(500))
    async with gateway(upstream, ["a", "b", "c"], groups=group("a", "b", "c")) as (_, client):
        result = await client.query("hi", model="g")
    assert upstream.models_called() == ["a", "b", "c"]
    assert result.text == "".join(REPLY)
    assert (result.done.model, result.done.provider) == ("c", "scripted")
    assert result.events[0].start.model == "c"
    assert attempts(result.done) == [
        ("a", "UPSTREAM_UNAVAILABLE"),
        ("b", "UPSTREAM_UNAVAILABLE"),
        ("c", ""),
    ]


async def test_retryable_errors_are_retried_with_bounded_backoff(upstream):
    upstream.script("a", fail(503), fail(502), ok())
    retries = {"max_attempts": 3, "backoff_initial_ms": 40, "backoff_max_ms": 60}
    async with gateway(upstream, ["a"], resilience={"retries": retries}) as (_, client):
        result = await client.query("hi", model="a")
    calls = upstream.calls_to("a")
    assert len(calls) == 3
    assert attempts(result.done) == [
        ("a", "UPSTREAM_UNAVAILABLE"),
        ("a", "UPSTREAM_UNAVAILABLE"),
        ("a", ""),
    ]
    # Full jitter: each wait is at most min(max, initial * 2^n), plus scheduling slack
    # (test_policy checks the distribution itself).
    gaps = [b.at - a.ended_at for a, b in itertools.pairwise(calls)]
    assert gaps[0] < 0.040 + 0.15 and gaps[1] < 0.060 + 0.15


async def test_retries_stop_at_max_attempts(upstream):
    upstream.script("a", fail(503))
    retries = {"max_attempts": 4, "backoff_initial_ms": 1, "backoff_max_ms": 2}
    async with gateway(upstream, ["a"], resilience={"retries": retries}) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="a")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert len(upstream.calls_to("a")) == 4


async def test_retry_after_is_honoured_before_retrying(upstream):
    upstream.script("a", fail(429, retry_after_ms=300), ok())
    retries = {"max_attempts": 2, "backoff_initial_ms": 1, "backoff_max_ms": 2}
    async with gateway(upstream, ["a"], resilience={"retries": retries}) as (_, client):
        result = await client.query("hi", model="a")
    first, second = upstream.calls_to("a")
    assert second.at - first.ended_at >= 0.29
    assert attempts(result.done) == [("a", "UPSTREAM_RATE_LIMITED"), ("a", "")]


async def test_a_retry_after_longer_than_the_cap_falls_back_at_once(upstream):
    upstream.script("a", fail(429, retry_after_ms=5000))
    retries = {"max_attempts": 3, "max_retry_after_ms": 1000}
    async with gateway(
        upstream, ["a", "b"], groups=group("a", "b"), resilience={"retries": retries}
    ) as (_, client):
        started = time.monotonic()
        result = await client.query("hi", model="g")
    assert upstream.models_called() == ["a", "b"]
    assert result.done.model == "b"
    assert time.monotonic() - started < 1.0


async def test_an_invalid_request_is_neither_retried_nor_falls_back(upstream):
    upstream.script("a", fail(400))
    retries = {"max_attempts": 3}
    async with gateway(
        upstream, ["a", "b"], groups=group("a", "b"), resilience={"retries": retries}
    ) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="g")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert upstream.models_called() == ["a"]


async def test_fallback_reasons_are_configurable(upstream):
    upstream.script("a", fail(503))
    async with gateway(
        upstream,
        ["a", "b"],
        groups=group("a", "b"),
        resilience={"fallback_on": ["UPSTREAM_TIMEOUT"]},
    ) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="g")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert upstream.models_called() == ["a"]


async def test_context_too_long_falls_back_to_a_larger_context_model(upstream):
    upstream.script("small", fail(400, code="context_length_exceeded"))
    models = [
        {"name": "small", "context_window": 8000},
        {"name": "also-small", "context_window": 8000},
        {"name": "big", "context_window": 128000},
    ]
    async with gateway(upstream, models, groups=group("small", "also-small", "big")) as (
        _,
        client,
    ):
        result = await client.query("hi", model="g")
    assert upstream.models_called() == ["small", "big"]
    assert attempts(result.done) == [("small", "CONTEXT_TOO_LONG"), ("big", "")]


async def test_nothing_is_retried_once_the_first_token_was_sent(upstream):
    upstream.script("a", die(after_words=2))
    retries = {"max_attempts": 3}
    async with gateway(
        upstream, ["a", "b"], groups=group("a", "b"), resilience={"retries": retries}
    ) as (_, client):
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in client.stream(build_query_request("hi", model="g")):
                received.append(event.WhichOneof("event"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert received[0] == "start" and "delta" in received
    assert upstream.models_called() == ["a"]


async def test_no_attempt_starts_after_the_callers_deadline(upstream):
    upstream.script("a", fail(503))
    retries = {"max_attempts": 100, "backoff_initial_ms": 60, "backoff_max_ms": 60}
    async with gateway(upstream, ["a"], resilience={"retries": retries}) as (_, client):
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="a", timeout=0.5)
        await asyncio.sleep(0.2)  # anything still scheduled would show up now
    assert caught.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    calls = upstream.calls_to("a")
    assert len(calls) >= 3
    assert all(c.at < started + 0.5 for c in calls)


async def test_an_attempt_that_cannot_finish_in_time_is_not_started(upstream):
    upstream.script("slow", ok(ttft_s=0.6))
    async with gateway(upstream, ["slow", "fast"], groups=group("slow", "fast")) as (_, client):
        for _ in range(2):  # the gateway learns that slow takes about 600 ms
            await client.query("hi", model="slow")
        result = await client.query("hi", model="g", timeout=0.4)
        assert result.done.model == "fast"
        assert attempts(result.done) == [("fast", "")]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="slow", timeout=0.4)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(upstream.calls_to("slow")) == 2  # neither deadline-bound request reached it


async def test_circuit_opens_is_skipped_at_no_cost_and_recovers_half_open(upstream):
    upstream.script("a", fail(503), fail(503), ok())
    breaker = {"consecutive_failures": 2, "cooldown_s": 0.3, "half_open_probes": 1}
    async with gateway(
        upstream, ["a", "b"], groups=group("a", "b"), resilience={"circuit_breaker": breaker}
    ) as (_, client):
        for _ in range(2):
            assert (await client.query("hi", model="g")).done.model == "b"
        states = {m.name: m for m in (await client.status()).models}
        assert states["a"].circuit_state == pb.CIRCUIT_STATE_OPEN
        assert states["a"].error_rate == 1.0
        assert states["b"].circuit_state == pb.CIRCUIT_STATE_CLOSED
        # Open: a is not called at all, and not listed as tried.
        result = await client.query("hi", model="g")
        assert attempts(result.done) == [("b", "")]
        assert len(upstream.calls_to("a")) == 2
        # After the cooldown one probe goes through; it succeeds and closes the circuit.
        await asyncio.sleep(0.35)
        result = await client.query("hi", model="g")
        assert attempts(result.done) == [("a", "")]
        states = {m.name: m for m in (await client.status()).models}
        assert states["a"].circuit_state == pb.CIRCUIT_STATE_CLOSED


async def test_every_circuit_open_fails_fast_without_an_upstream_call(upstream):
    upstream.script("a", fail(503))
    breaker = {"consecutive_failures": 1, "cooldown_s": 30}
    async with gateway(upstream, ["a"], resilience={"circuit_breaker": breaker}) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError):
            await client.query("hi", model="a")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="a")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "open circuit" in caught.value.details()
    assert len(upstream.calls_to("a")) == 1


async def test_status_shows_in_flight_and_latency_percentiles(upstream):
    upstream.script("a", ok(ttft_s=0.05), ok(ttft_s=0.05), HANG)
    async with gateway(upstream, ["a"]) as (_, client):
        for _ in range(2):
            await client.query("hi", model="a")
        call = client.stream(build_query_request("hi", model="a"))
        pending = asyncio.ensure_future(call.read())
        await upstream.wait_for(lambda: len(upstream.calls) == 3)
        status = {m.name: m for m in (await client.status()).models}["a"]
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await pending
    assert status.in_flight == 1
    assert status.ttft_p50_ms >= 50 and status.ttft_p95_ms >= status.ttft_p50_ms
    assert status.latency_p95_ms >= status.latency_p50_ms >= 50
    assert status.circuit_state == pb.CIRCUIT_STATE_CLOSED


async def test_round_robin_spreads_requests_exactly_over_grpc(upstream):
    async with gateway(
        upstream, ["a", "b", "c"], groups=group("a", "b", "c", strategy="round_robin")
    ) as (_, client):
        served = [(await client.query("hi", model="g")).done.model for _ in range(30)]
    assert served[:3] in (["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"])
    assert {m: served.count(m) for m in "abc"} == {"a": 10, "b": 10, "c": 10}


async def test_ab_split_is_sticky_by_metadata_and_by_request_field(upstream):
    ab = [
        {
            "name": "g",
            "strategy": "ab_split",
            "members": [{"model": "a", "percent": 50}, {"model": "b", "percent": 50}],
        }
    ]
    async with gateway(upstream, ["a", "b"], groups=ab) as (_, client):
        by_key = {}
        for i in range(8):
            key = f"user-{i}"
            md = [("x-llmproxy-route-key", key)]
            got = {(await client.query("hi", model="g", metadata=md)).done.model for _ in range(5)}
            assert len(got) == 1
            by_key[key] = got.pop()
            # The request field names the same key: the same variant.
            field = await client.query("hi", model="g", route_key=key)
            assert field.done.model == by_key[key]
        assert set(by_key.values()) == {"a", "b"}  # 8 keys at 50/50: both variants seen


async def test_retries_fallbacks_and_circuit_changes_reach_the_metrics(upstream):
    upstream.script("a", fail(503))
    resilience = {
        "retries": {"max_attempts": 2, "backoff_initial_ms": 1, "backoff_max_ms": 2},
        "circuit_breaker": {"consecutive_failures": 2, "cooldown_s": 30},
    }
    async with gateway(upstream, ["a", "b"], groups=group("a", "b"), resilience=resilience) as (
        app,
        client,
    ):
        assert (await client.query("hi", model="g")).done.model == "b"
        sample = app.registry.get_sample_value
        assert sample("llmproxy_retries_total", {"provider": "scripted", "model": "a"}) == 1
        assert sample("llmproxy_fallbacks_total", {"from_model": "a", "to_model": "b"}) == 1
        errors = {"provider": "scripted", "model": "a", "type": "upstream_unavailable"}
        assert sample("llmproxy_upstream_errors_total", errors) == 2
        assert sample("llmproxy_circuit_state", {"model": "a", "provider": "scripted"}) == 2
