"""The shared Redis tier with the real Redis on 127.0.0.1:6379, and the gateway without it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest
import redis.asyncio as redis
from redis.crc import key_slot

from llmproxy.client.client import build_query_request, to_result
from llmproxy.server.core.caching.redis_tier import RedisTier
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.caching.conftest import CLOSED_REDIS_URL, REDIS_URL, gateway_config
from tests.caching.fake_llm import reply_text
from tests.support.running import running_client, settings_for


async def ask(client, prompt: str = "shared?"):
    request = build_query_request(prompt, model="ok", temperature=0.0)
    return to_result([e async for e in client.stream(request)])


def redis_cache(url: str, prefix: str, **exact) -> dict:
    return {"exact": {"backend": "redis", "redis_url": url, "key_prefix": prefix, **exact}}


async def wait_for_keys(prefix: str, count: int) -> list[bytes]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for _ in range(200):
            keys = [k async for k in client.scan_iter(match=prefix + "*")]
            if len(keys) >= count:
                return keys
            await asyncio.sleep(0.01)
        return keys
    finally:
        await client.aclose()


async def test_two_gateways_share_answers_through_redis(upstream, redis_prefix):
    settings = settings_for(
        gateway_config(upstream.base_url, cache=redis_cache(REDIS_URL, redis_prefix, ttl_s=30))
    )
    async with (
        running_client(settings) as (_, client_a),
        running_client(settings) as (app_b, client_b),
    ):
        first = await ask(client_a)
        assert first.done.cache_status == pb.CACHE_STATUS_MISS
        (key,) = await wait_for_keys(redis_prefix, 1)
        # `<prefix>{<digest>}:<deployment>`: the digest is the hash tag.
        assert key.startswith(redis_prefix.encode() + b"{") and b"}:ok|fake|ok" in key
        assert len(app_b.cache.exact.memory) == 0
        second = await ask(client_b)
        assert second.done.cache_status == pb.CACHE_STATUS_HIT
        assert second.text == first.text == reply_text(1, "shared?")
        # B keeps it locally now: a third ask does not need Redis.
        assert len(app_b.cache.exact.memory) == 1
        check = redis.Redis.from_url(REDIS_URL)
        ttl_ms = await check.pttl(key)
        await check.aclose()
        assert 25_000 < ttl_ms <= 30_000
    assert len(upstream.requests) == 1


async def test_refresh_on_one_gateway_reaches_redis(upstream, redis_prefix):
    settings = settings_for(
        gateway_config(upstream.base_url, cache=redis_cache(REDIS_URL, redis_prefix))
    )
    async with (
        running_client(settings) as (_, client_a),
        running_client(settings) as (_, client_b),
    ):
        await ask(client_a)
        refresh = build_query_request(
            "shared?",
            model="ok",
            temperature=0.0,
            cache=pb.CacheOptions(mode=pb.CACHE_MODE_REFRESH),
        )
        refreshed = to_result([e async for e in client_a.stream(refresh)])
        await asyncio.sleep(0.05)  # the Redis write runs after the stream
        hit = await ask(client_b)
        assert hit.text == refreshed.text == reply_text(2, "shared?")


async def test_redis_down_degrades_to_memory_and_never_fails_a_request(
    upstream, redis_prefix, caplog
):
    caplog.set_level(logging.WARNING, logger="llmproxy.server.core.caching.redis_tier")
    settings = settings_for(
        gateway_config(upstream.base_url, cache=redis_cache(CLOSED_REDIS_URL, redis_prefix))
    )
    async with running_client(settings) as (app, client):
        started = time.perf_counter()
        first = await ask(client)
        second = await ask(client)
        elapsed = time.perf_counter() - started
        assert first.done.cache_status == pb.CACHE_STATUS_MISS
        assert second.done.cache_status == pb.CACHE_STATUS_HIT
        # Two requests, no multi-second socket timeouts on the way.
        assert elapsed < 1.5
        assert not app.cache.redis.available
    failures = [r for r in caplog.records if "redis cache tier failed" in r.getMessage()]
    # Logged once for the outage, not once per request; the URL never appears.
    assert len(failures) == 1
    assert "127.0.0.1:1" not in caplog.text


@contextlib.asynccontextmanager
async def silent_server():
    """Accepts connections and never answers: a Redis that hangs."""
    writers = []

    async def handle(reader, writer):
        writers.append(writer)
        await reader.read(1 << 16)
        await asyncio.sleep(30)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in writers:
            w.close()
        server.close()


async def test_a_hanging_redis_costs_at_most_the_short_timeout(upstream, redis_prefix):
    async with silent_server() as port:
        cache = redis_cache(f"redis://127.0.0.1:{port}/0", redis_prefix, redis_timeout_ms=50)
        async with running_client(settings_for(gateway_config(upstream.base_url, cache=cache))) as (
            app,
            client,
        ):
            started = time.perf_counter()
            result = await ask(client)
            assert result.done.cache_status == pb.CACHE_STATUS_MISS
            assert time.perf_counter() - started < 1.0
            assert not app.cache.redis.available
            assert (await ask(client)).done.cache_status == pb.CACHE_STATUS_HIT


class FlakyClient:
    """Fails while `down`; records what reached it."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0

    async def mget(self, keys):
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("refused")
        return [b"value" if k == "b" else None for k in keys]

    async def aclose(self) -> None:
        pass


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_redis_is_skipped_after_a_failure_and_retried_later():
    client, clock = FlakyClient(), Clock()
    tier = RedisTier(client, timeout_s=0.05, retry_s=5, clock=clock)  # type: ignore[arg-type]
    assert await tier.get_first(["a", "b"]) is None
    assert client.calls == 1 and not tier.available
    client.down = False
    clock.now = 4.9
    assert await tier.get_first(["a", "b"]) is None  # still skipped: no call made
    assert client.calls == 1
    clock.now = 5.0
    assert await tier.get_first(["a", "b"]) == ("b", b"value")
    assert client.calls == 2 and tier.available


@pytest.mark.parametrize("prefix", ["llmproxy:cache:"])
def test_slot_of_a_request_is_the_slot_of_its_digest(prefix):
    key = f"{prefix}{{0123abcd}}:ok|fake|ok"
    assert key_slot(key.encode()) == key_slot(b"0123abcd")
