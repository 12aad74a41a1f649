"""The exact cache end to end: gRPC client -> gateway -> fake upstream, and back from cache."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from llmproxy.client.client import build_query_request, to_result
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.caching.conftest import gateway_config
from tests.caching.fake_llm import PROMPT_TOKENS, reply_text
from tests.support.running import running_client, settings_for

BYPASS = pb.CacheOptions(mode=pb.CACHE_MODE_BYPASS)
REFRESH = pb.CacheOptions(mode=pb.CACHE_MODE_REFRESH)


async def ask(client, prompt="What is 2+2?", **kwargs):
    kwargs.setdefault("model", "ok")
    kwargs.setdefault("temperature", 0.0)
    request = build_query_request(prompt, **kwargs)
    return to_result([e async for e in client.stream(request)])


@pytest.fixture
async def gateway(upstream):
    settings = settings_for(gateway_config(upstream.base_url))
    async with running_client(settings) as (app, client):
        yield app, client, upstream


async def test_miss_then_hit_replays_the_same_stream_shape(gateway):
    _, client, upstream = gateway
    first = await ask(client, request_id="r1")
    second = await ask(client, request_id="r2")
    assert len(upstream.requests) == 1
    assert first.text == second.text == reply_text(1, "What is 2+2?")
    kinds = [e.WhichOneof("event") for e in second.events]
    assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
    assert all(e.request_id == "r2" for e in second.events)
    assert (second.events[0].start.model, second.events[0].start.provider) == ("ok", "fake")
    assert first.done.cache_status == pb.CACHE_STATUS_MISS
    done = second.done
    assert done.cache_status == pb.CACHE_STATUS_HIT
    assert (done.model, done.provider) == ("ok", "fake")
    # The original token counts, reported again; the hit made no upstream attempt.
    assert done.usage.input_tokens == first.done.usage.input_tokens == PROMPT_TOKENS
    assert done.usage.output_tokens == first.done.usage.output_tokens
    assert done.metadata.finish_reason == pb.FINISH_REASON_STOP
    assert done.metadata.request_id == "r2"
    assert list(done.attempts) == []
    assert done.cache_similarity == 0.0


async def test_a_different_prompt_or_parameter_is_a_miss(gateway):
    _, client, upstream = gateway
    await ask(client)
    await ask(client, "What is 3+3?")
    await ask(client, max_tokens=100)
    await ask(client, stop=["\n"])
    await ask(client, "", messages=[("system", "Be brief."), ("user", "What is 2+2?")])
    await ask(client, model="ok2")
    assert len(upstream.requests) == 6


async def test_bypass_neither_reads_nor_writes(gateway):
    _, client, upstream = gateway
    bypassed = await ask(client, cache=BYPASS)
    assert bypassed.done.cache_status == pb.CACHE_STATUS_BYPASS
    assert (await ask(client)).done.cache_status == pb.CACHE_STATUS_MISS
    again = await ask(client, cache=BYPASS)
    assert again.done.cache_status == pb.CACHE_STATUS_BYPASS
    assert len(upstream.requests) == 3


async def test_refresh_calls_upstream_and_replaces_the_entry(gateway):
    _, client, upstream = gateway
    await ask(client)
    refreshed = await ask(client, cache=REFRESH)
    assert refreshed.done.cache_status == pb.CACHE_STATUS_REFRESH
    assert refreshed.text == reply_text(2, "What is 2+2?")
    hit = await ask(client)
    assert hit.done.cache_status == pb.CACHE_STATUS_HIT
    assert hit.text == refreshed.text
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(
    ("kwargs", "cached"),
    [
        ({"temperature": None}, False),
        ({"temperature": 0.7}, False),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"temperature": None, "seed": 7}, True),
        ({"temperature": 0.0}, True),
        (
            {"temperature": 1.0, "cache": pb.CacheOptions(allow_nondeterministic=True)},
            True,
        ),
    ],
)
async def test_only_repeatable_requests_are_cached_unless_the_caller_opts_in(
    gateway, kwargs, cached
):
    _, client, upstream = gateway
    first = await ask(client, **kwargs)
    second = await ask(client, **kwargs)
    assert len(upstream.requests) == (1 if cached else 2)
    expected = pb.CACHE_STATUS_HIT if cached else pb.CACHE_STATUS_BYPASS
    assert second.done.cache_status == expected
    assert first.done.cache_status != pb.CACHE_STATUS_HIT


@pytest.mark.parametrize("model", ["content-filter", "truncated", "500"])
async def test_errors_truncated_and_filtered_answers_are_never_cached(gateway, model):
    _, client, upstream = gateway
    for _ in range(2):
        try:
            result = await ask(client, model=model)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        else:
            assert result.done.metadata.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
            assert result.done.cache_status == pb.CACHE_STATUS_MISS
    calls = [r for r in upstream.requests if b'"model":"%s"' % model.encode() in r.body]
    assert len(calls) >= 2


async def test_length_limited_answer_is_cached_for_the_same_max_tokens(gateway):
    _, client, upstream = gateway
    first = await ask(client, model="length", max_tokens=4)
    second = await ask(client, model="length", max_tokens=4)
    assert second.done.cache_status == pb.CACHE_STATUS_HIT
    assert second.done.metadata.finish_reason == pb.FINISH_REASON_LENGTH
    assert second.text == first.text and len(upstream.requests) == 1


async def test_a_cancelled_stream_is_not_stored(gateway):
    _, client, upstream = gateway
    call = client.stream(build_query_request("stop me", model="slow", temperature=0.0))
    async for event in call:
        if event.HasField("delta") and event.delta.text:
            call.cancel()
            break
    await asyncio.wait_for(upstream.event("disconnected:slow").wait(), 2)
    result = await ask(client, "stop me", model="slow")
    assert result.done.cache_status == pb.CACHE_STATUS_MISS
    assert len(upstream.requests) == 2


async def test_entries_expire_after_ttl(upstream):
    config = gateway_config(upstream.base_url, cache={"exact": {"ttl_s": 1.0}})
    async with running_client(settings_for(config)) as (_, client):
        await ask(client)
        assert (await ask(client)).done.cache_status == pb.CACHE_STATUS_HIT
        await asyncio.sleep(1.05)
        expired = await ask(client)
        assert expired.done.cache_status == pb.CACHE_STATUS_MISS
        assert expired.text == reply_text(2, "What is 2+2?")
    assert len(upstream.requests) == 2


async def test_lru_evicts_by_bytes(upstream):
    # Room for about two entries: the third evicts the least recently used one.
    config = gateway_config(upstream.base_url, cache={"exact": {"max_bytes": 700}})
    async with running_client(settings_for(config)) as (app, client):
        await ask(client, "prompt a")
        await ask(client, "prompt b")
        assert (await ask(client, "prompt a")).done.cache_status == pb.CACHE_STATUS_HIT
        await ask(client, "prompt c")  # evicts b, the least recently used
        memory = app.cache.exact.memory
        assert len(memory) == 2 and memory.bytes_used <= 700
        assert (await ask(client, "prompt a")).done.cache_status == pb.CACHE_STATUS_HIT
        assert (await ask(client, "prompt b")).done.cache_status == pb.CACHE_STATUS_MISS
    assert len(upstream.requests) == 4


async def test_fallback_answer_is_stored_under_the_model_that_answered(upstream):
    groups = [{"name": "grp", "members": [{"model": "500"}], "fallback": ["ok"]}]
    config = gateway_config(upstream.base_url, groups=groups)
    async with running_client(settings_for(config)) as (_, client):
        first = await ask(client, model="grp")
        assert first.done.model == "ok" and first.done.cache_status == pb.CACHE_STATUS_MISS
        calls = len(upstream.requests)
        # The group and the answering model itself both find it.
        assert (await ask(client, model="grp")).done.cache_status == pb.CACHE_STATUS_HIT
        direct = await ask(client, model="ok")
        assert direct.done.cache_status == pb.CACHE_STATUS_HIT and direct.text == first.text
        assert len(upstream.requests) == calls


async def test_cache_switched_off_builds_no_stage(upstream):
    cache = {"exact": {"enabled": False}, "coalesce": False}
    config = gateway_config(upstream.base_url, cache=cache)
    async with running_client(settings_for(config)) as (app, client):
        assert app.cache is None and app.queries.cache is None
        await ask(client)
        result = await ask(client)
        assert result.done.cache_status == pb.CACHE_STATUS_MISS
    assert len(upstream.requests) == 2
