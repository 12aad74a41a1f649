"""When a retry or fallback is refused because it cannot end before the caller's deadline,
the caller gets DEADLINE_EXCEEDED naming the last upstream failure, not that failure
itself; errors that are neither retried nor fallen back from still reach it as they are."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmproxy.client.client import build_query_request, to_result
from tests.caching.conftest import eventually
from tests.routing.scripted import fail, gateway, ok

RETRIES = {"max_attempts": 3, "backoff_initial_ms": 1, "backoff_max_ms": 2}


def group(*members: str) -> list[dict]:
    return [{"name": "g", "strategy": "priority", "members": [{"model": m} for m in members]}]


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status")


async def refused(client, model: str, timeout: float) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model=model, timeout=timeout)
    return caught.value


async def test_a_retry_after_longer_than_the_time_left_is_deadline_exceeded(upstream):
    upstream.script("a", fail(500, retry_after_ms=800))
    async with gateway(upstream, ["a"], resilience={"retries": RETRIES}) as (_, client):
        started = time.monotonic()
        error = await refused(client, "a", timeout=0.5)
    # Answered at once, by the gateway: the retry was not waited for, nor the deadline.
    assert time.monotonic() - started < 0.4
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(error)
    assert info.reason == "DEADLINE_EXCEEDED"
    assert dict(info.metadata) == {"attempts": "1", "last_reason": "UPSTREAM_UNAVAILABLE"}
    assert "after 1 attempt" in error.details() and "UPSTREAM_UNAVAILABLE" in error.details()
    assert "scripted failure" not in error.details()  # the upstream's own text stays out
    assert len(upstream.calls_to("a")) == 1


async def test_a_retry_refused_for_time_is_deadline_exceeded_even_without_fallback(upstream):
    upstream.script("a", fail(503, retry_after_ms=800))
    resilience = {"retries": RETRIES, "fallback_on": ["UPSTREAM_TIMEOUT"]}
    async with gateway(upstream, ["a", "b"], groups=group("a", "b"), resilience=resilience) as (
        _,
        client,
    ):
        error = await refused(client, "g", timeout=0.5)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert dict(error_info(error).metadata) == {
        "attempts": "1",
        "last_reason": "UPSTREAM_UNAVAILABLE",
    }
    assert upstream.models_called() == ["a"]


async def test_a_fallback_slower_than_the_time_left_is_deadline_exceeded(upstream):
    upstream.script("a", fail(500), fail(500), fail(500))
    upstream.script("slow", ok(ttft_s=0.5))
    async with gateway(
        upstream, ["a", "slow"], groups=group("a", "slow"), resilience={"retries": RETRIES}
    ) as (_, client):
        await client.query("hi", model="slow")  # the gateway learns that slow takes 500 ms
        error = await refused(client, "g", timeout=0.3)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(error)
    assert dict(info.metadata) == {"attempts": "3", "last_reason": "UPSTREAM_UNAVAILABLE"}
    assert "after 3 attempts" in error.details()
    assert upstream.models_called() == ["slow", "a", "a", "a"]


async def test_an_invalid_request_stays_invalid_argument_under_a_tight_deadline(upstream):
    upstream.script("a", fail(400))
    async with gateway(
        upstream, ["a", "b"], groups=group("a", "b"), resilience={"retries": RETRIES}
    ) as (_, client):
        error = await refused(client, "g", timeout=0.5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info.reason == "UPSTREAM_INVALID_REQUEST"
    assert info.metadata["attempts"] == "1" and "last_reason" not in info.metadata
    assert upstream.models_called() == ["a"]


async def test_retries_exhausted_in_time_stay_unavailable(upstream):
    upstream.script("a", fail(503))
    async with gateway(upstream, ["a"], resilience={"retries": RETRIES}) as (_, client):
        error = await refused(client, "a", timeout=5)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "UPSTREAM_UNAVAILABLE" and info.metadata["attempts"] == "3"
    assert len(upstream.calls_to("a")) == 3


async def test_a_retry_that_fits_still_happens(upstream):
    upstream.script("a", fail(500, retry_after_ms=150), ok())
    async with gateway(upstream, ["a"], resilience={"retries": RETRIES}) as (_, client):
        result = await client.query("hi", model="a", timeout=2)
    first, second = upstream.calls_to("a")
    assert second.at - first.ended_at >= 0.14
    assert [(a.model, a.error_reason) for a in result.done.attempts] == [
        ("a", "UPSTREAM_UNAVAILABLE"),
        ("a", ""),
    ]


async def test_a_follower_with_time_left_reruns_a_call_its_leader_ran_out_of_time_for(
    upstream,
):
    """The leader is still waiting when its retry is refused: before, the upstream error
    was shared with the follower; now it is the leader's deadline, and the follower
    runs the call again in its own time."""
    upstream.script("a", fail(500, retry_after_ms=800, after_s=0.4), ok())
    request = build_query_request("share", model="a", temperature=0.0)
    async with gateway(upstream, ["a"], resilience={"retries": RETRIES}) as (app, client):
        leader = asyncio.create_task(client.query("share", model="a", temperature=0.0, timeout=1))
        await upstream.wait_for(lambda: len(upstream.calls) == 1)
        follower = asyncio.create_task(
            asyncio.wait_for(_collect(client.stream(request, timeout=10)), 5)
        )
        await eventually(lambda: _subscribers(app) == 2, 0.3)  # while the call is held
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await leader
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        result = to_result(await follower)
    assert result.done.model == "a"
    assert [(a.model, a.error_reason) for a in result.done.attempts] == [("a", "")]
    assert len(upstream.calls_to("a")) == 2


def _subscribers(app) -> int:
    return sum(len(f.subscribers) for f in app.cache.coalescer.flights())


async def _collect(call) -> list:
    return [event async for event in call]
