"""Rate limits through real servers: memory and Redis buckets, shared limits, Redis down."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
import redis.asyncio as aioredis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.core import tokens
from llmproxy.server.domain import Message, Role
from tests.interceptors.conftest import REDIS_URL, key_entry, mock_settings
from tests.interceptors.test_observability import scrape, value
from tests.support.running import running_app


def unpack(error: grpc.aio.AioRpcError) -> dict[str, object]:
    out: dict[str, object] = {}
    for detail in rpc_status.from_call(error).details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.QuotaFailure,
        ):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out[cls.__name__] = message
    return out


async def refusal(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def retry_after(error: grpc.aio.AioRpcError) -> float:
    return unpack(error)["RetryInfo"].retry_delay.ToNanoseconds() / 1e9


def limits(keys, backend: str = "memory", prefix: str = "llmproxy:rl:", **rate_limits):
    return mock_settings(
        auth={
            "enabled": True,
            "api_keys": [
                key_entry("team-a", keys["team-a"]),
                key_entry("limited", keys["limited"], rate_limit={"requests_per_minute": 60}),
                key_entry("team-b", keys["team-b"], rate_limit={"requests_per_minute": 6}),
            ],
        },
        rate_limits={
            "backend": backend,
            "redis_url": REDIS_URL,
            "key_prefix": prefix,
            **rate_limits,
        },
    )


def client(app, key: str | None = None) -> AsyncLLMProxyClient:
    return AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}", api_key=key)


async def exhaust_requests(clients: list[AsyncLLMProxyClient], count: int) -> None:
    for i in range(count):
        await clients[i % len(clients)].status()


async def call_until_refused(
    c: AsyncLLMProxyClient, bound: int
) -> tuple[int, grpc.aio.AioRpcError]:
    """Status calls until one is refused: (how many passed, the refusal)."""
    for passed in range(bound):
        try:
            await c.status()
        except grpc.aio.AioRpcError as error:
            return passed, error
    raise AssertionError(f"no refusal within {bound} calls")


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_request_limit_hits_names_the_limit_and_resets(keys, redis_prefix, backend, logs):
    async with (
        running_app(limits(keys, backend, redis_prefix)) as app,
        client(app, keys["limited"]) as limited,
        client(app, keys["team-a"]) as other,
    ):
        started = time.monotonic()
        passed, error = await call_until_refused(limited, 200)
        # A full minute's allowance, plus what refilled (1/s) while it was spent.
        assert 60 <= passed <= 61 + time.monotonic() - started
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = unpack(error)
        assert details["ErrorInfo"].reason == "RATE_LIMITED"
        (violation,) = details["QuotaFailure"].violations
        assert violation.subject == "key:limited"
        assert violation.description == "requests_per_minute limit of 60"
        wait = retry_after(error)
        assert 0 < wait <= 1.0  # one request refills in a second at 60/min
        # Other keys have their own (here: unlimited) buckets.
        await other.status()
        await asyncio.sleep(wait + 0.05)
        await limited.status()
        _, samples = await scrape(app)
    assert (
        value(samples, "llmproxy_rate_limit_rejections_total", limit="requests", scope="key") == 1
    )
    assert [e["code"] for e in logs.access()].count("RESOURCE_EXHAUSTED") == 1
    logs.assert_no_secret(*keys.values())


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_token_limit_counts_the_prompt_then_settles_the_real_usage(
    keys, redis_prefix, backend
):
    settings = limits(keys, backend, redis_prefix, default={"tokens_per_minute": 30})
    prompt = tokens.count_messages("mock-fast", [Message(Role.USER, "hello there")])
    async with running_app(settings) as app, client(app, keys["team-a"]) as c:
        done = (await c.query("hello there", model="fast")).done
        used = done.metadata.input_tokens + done.metadata.output_tokens
        assert used > prompt and 30 - used < prompt  # usage, not the estimate, exhausts it
        if backend == "redis":
            await settled(f"{redis_prefix}{{team-a}}:t", 30 - used)
        error = await refusal(c.query("hello there", model="fast"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (violation,) = unpack(error)["QuotaFailure"].violations
        assert violation.description == "tokens_per_minute limit of 30"
        # Refill is 0.5 token/s: the wait is what the real usage left owing, to the second.
        expected = (prompt - (30 - used)) / 0.5
        assert expected - 5 < retry_after(error) <= expected  # less what refilled meanwhile


async def settled(key: str, level: float) -> None:
    """Wait for the background settlement to reach Redis (it never blocks the response)."""
    redis = aioredis.Redis.from_url(REDIS_URL)
    try:
        for _ in range(100):
            stored = await redis.hget(key, "l")
            if stored is not None and float(stored) < level + 1:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{key} never settled to {level}: {stored!r}")
    finally:
        await redis.aclose()


async def test_per_model_limits(keys):
    settings = limits(keys, models={"smart": {"requests_per_minute": 2}})
    async with running_app(settings) as app, client(app, keys["team-a"]) as c:
        for _ in range(2):
            await c.query("hi", model="smart")
        error = await refusal(c.query("hi", model="smart"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        (violation,) = unpack(error)["QuotaFailure"].violations
        assert violation.subject == "key:team-a/model:smart"
        assert (await c.query("hi", model="fast")).done.model == "fast"


async def test_two_servers_share_one_redis_limit(keys, redis_prefix):
    settings = limits(keys, "redis", redis_prefix)
    async with (
        running_app(settings) as one,
        running_app(settings) as two,
        client(one, keys["team-b"]) as a,
        client(two, keys["team-b"]) as b,
    ):
        await exhaust_requests([a, b], 6)  # 3 through each replica: the key's 6 a minute
        for c in (a, b):
            assert (await refusal(c.status())).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_redis_down_fails_open_or_closed_as_configured(keys, logs, policy):
    settings = mock_settings(
        rate_limits={
            "backend": "redis",
            "redis_url": f"redis://127.0.0.1:{closed_port()}/0",
            "on_backend_failure": policy,
            "default": {"requests_per_minute": 1},
        }
    )
    async with running_app(settings) as app, client(app) as c:
        for _ in range(3):
            if policy == "open":
                assert (await c.query("hi", model="fast")).done.model == "fast"
            else:
                error = await refusal(c.query("hi", model="fast"))
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert unpack(error)["ErrorInfo"].reason == "RATE_LIMITER_UNAVAILABLE"
        _, samples = await scrape(app)
    assert (
        value(samples, "llmproxy_rate_limit_backend_errors_total", backend="redis", policy=policy)
        == 3
    )
    warnings = [r.getMessage() for r in logs.records if r.levelname == "WARNING"]
    assert f"rate-limit backend unavailable; failing {policy}" in warnings


async def test_a_hook_failing_unexpectedly_is_internal_with_the_request_id(keys, monkeypatch):
    """A bug in an interceptor's check becomes INTERNAL with a generic message, never
    grpc's UNKNOWN carrying the exception's text."""
    from llmproxy.server.security.buckets import MemoryBuckets

    async def broken_take(self, buckets):
        raise RuntimeError("redis://user:hunter2@cache broke")

    monkeypatch.setattr(MemoryBuckets, "take", broken_take)
    async with running_app(limits(keys)) as app:
        c = client(app, keys["limited"])
        try:
            error = await refusal(c.status())
        finally:
            await c.close()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in (error.details() or "")
    assert "request_id=" in error.details()
