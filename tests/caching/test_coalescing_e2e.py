"""Request coalescing through the real gRPC server: one upstream call, every caller served."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.client.client import build_query_request, to_result
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.caching.conftest import eventually, gateway_config
from tests.caching.fake_llm import reply_text
from tests.support.running import running_client, settings_for

N = 5


@pytest.fixture
async def gateway(upstream):
    async with running_client(settings_for(gateway_config(upstream.base_url))) as (app, client):
        yield app, client, upstream


def request(prompt: str = "share me", model: str = "gated") -> pb.QueryRequest:
    return build_query_request(prompt, model=model, temperature=0.0)


async def collect(client, req: pb.QueryRequest):
    return to_result([e async for e in client.stream(req)])


def subscribers(app) -> int:
    return sum(len(f.subscribers) for f in app.cache.coalescer.flights())


async def wait_for_subscribers(app, count: int) -> None:
    await eventually(lambda: subscribers(app) >= count)


async def test_concurrent_identical_requests_share_one_upstream_call(gateway):
    app, client, upstream = gateway
    tasks = [asyncio.create_task(collect(client, request())) for _ in range(N)]
    await wait_for_subscribers(app, N)
    upstream.event("release").set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(upstream.requests) == 1
    assert {r.text for r in results} == {reply_text(1, "share me")}
    for r in results:
        kinds = [e.WhichOneof("event") for e in r.events]
        assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
    statuses = sorted(r.done.cache_status for r in results)
    # One caller is charged for the call; the others are served as cache hits.
    assert statuses == [pb.CACHE_STATUS_MISS] + [pb.CACHE_STATUS_HIT] * (N - 1)
    assert all(r.done.usage.output_tokens == results[0].done.usage.output_tokens for r in results)
    assert app.cache.coalescer.flights() == []
    # And the answer is now cached.
    assert (await collect(client, request())).done.cache_status == pb.CACHE_STATUS_HIT
    assert len(upstream.requests) == 1


async def test_a_late_joiner_gets_what_was_already_streamed_then_the_rest(gateway):
    _, client, upstream = gateway
    first = client.stream(request(model="slow"))
    early: list[pb.QueryResponse] = []
    async for event in first:
        early.append(event)
        if sum(e.HasField("delta") and bool(e.delta.text) for e in early) == 2:
            break
    late = asyncio.create_task(collect(client, request(model="slow")))
    rest = [e async for e in first]
    late_result = await asyncio.wait_for(late, 5)
    assert to_result(early + rest).text == late_result.text == reply_text(1, "share me")
    assert len(upstream.requests) == 1


async def test_one_caller_cancelling_does_not_break_the_others(gateway):
    app, client, upstream = gateway
    leader = client.stream(request())
    leader_task = asyncio.create_task(to_list(leader))
    await wait_for_subscribers(app, 1)
    others = [asyncio.create_task(collect(client, request())) for _ in range(2)]
    await wait_for_subscribers(app, 3)
    leader.cancel()
    await wait_for_subscribers_exactly(app, 2)
    upstream.event("release").set()
    results = await asyncio.wait_for(asyncio.gather(*others), 5)
    assert [r.text for r in results] == [reply_text(1, "share me")] * 2
    assert upstream.disconnects == 0 and len(upstream.requests) == 1
    # The caller that is now first is the one charged for the shared call.
    assert sorted(r.done.cache_status for r in results) == [
        pb.CACHE_STATUS_MISS,
        pb.CACHE_STATUS_HIT,
    ]
    leader_task.cancel()
    await asyncio.gather(leader_task, return_exceptions=True)


async def test_the_upstream_call_is_cancelled_when_every_caller_leaves(gateway):
    app, client, upstream = gateway
    calls = [client.stream(request()) for _ in range(2)]
    tasks = [asyncio.create_task(to_list(c)) for c in calls]
    await wait_for_subscribers(app, 2)
    await asyncio.wait_for(upstream.event("started:gated").wait(), 2)
    for call in calls:
        call.cancel()
    await asyncio.wait_for(upstream.event("disconnected:gated").wait(), 3)
    assert app.cache.coalescer.flights() == []
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_requests_differing_in_anything_that_matters_do_not_share(gateway):
    app, client, upstream = gateway
    tasks = [
        asyncio.create_task(collect(client, request("one"))),
        asyncio.create_task(collect(client, request("two"))),
    ]
    await wait_for_subscribers(app, 2)
    assert len(app.cache.coalescer.flights()) == 2
    upstream.event("release").set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert {r.text.split(" to: ")[1] for r in results} == {"one", "two"}
    assert len(upstream.requests) == 2


async def test_coalescing_off_sends_every_request_upstream(upstream):
    config = gateway_config(upstream.base_url, cache={"coalesce": False})
    async with running_client(settings_for(config)) as (app, client):
        assert app.cache.coalescer is None
        tasks = [asyncio.create_task(collect(client, request())) for _ in range(3)]
        await eventually(lambda: len(upstream.requests) == 3)
        upstream.event("release").set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert len(upstream.requests) == 3


async def to_list(call) -> list:
    return [e async for e in call]


async def wait_for_subscribers_exactly(app, count: int) -> None:
    await eventually(lambda: subscribers(app) == count)
