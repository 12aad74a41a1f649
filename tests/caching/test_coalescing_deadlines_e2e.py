"""Coalesced callers keep their own deadlines: the shared call outlives the caller that
started it, a caller's deadline ends only its own wait, and the call stops with the last."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from functools import partial

import grpc
import pytest

from llmproxy.client.client import build_query_request, to_result
from llmproxy.server.core.caching.coalescer import Coalescer
from llmproxy.server.core.caching.stage import shared_completed
from llmproxy.server.domain import (
    CacheStatus,
    Completed,
    FinishReason,
    QueryEvent,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import DeadlineExceededError, UpstreamUnavailableError
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.caching.conftest import eventually, gateway_config
from tests.caching.fake_llm import reply_text
from tests.support.running import running_client, settings_for

PROMPT = "share my deadline"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}
# The first member hangs until released and then fails; the fallback answers.
GROUPS = [{"name": "grp", "members": [{"model": "gated-500"}], "fallback": ["ok"]}]


class Gateway:
    """A gateway with a SQLite ledger; `rows` holds its records once it has stopped."""

    def __init__(self, upstream, tmp_path) -> None:
        config = gateway_config(upstream.base_url, groups=GROUPS)
        for model in config["models"]:
            model["price"] = PRICE
        self.db = tmp_path / "usage.db"
        config["ledger"] = {"backend": "sqlite", "path": str(self.db)}
        self.serving = running_client(settings_for(config))
        self.rows: list[dict] = []

    async def __aenter__(self):
        return await self.serving.__aenter__()

    async def __aexit__(self, *exc) -> None:
        await self.serving.__aexit__(*exc)
        # After stop: the ledger writer has flushed every record.
        with contextlib.closing(sqlite3.connect(self.db)) as conn:
            conn.row_factory = sqlite3.Row
            self.rows = [dict(r) for r in conn.execute("SELECT * FROM llmproxy_usage")]

    def statuses(self) -> list[tuple[str, str, bool]]:
        """(status, cache_status, charged) of every record, sorted."""
        return sorted((r["status"], r["cache_status"], r["cost_usd"] > 0) for r in self.rows)


def request(model: str) -> pb.QueryRequest:
    return build_query_request(PROMPT, model=model, temperature=0.0)


def subscribers(app) -> int:
    return sum(len(f.subscribers) for f in app.cache.coalescer.flights())


async def collect(call) -> list[pb.QueryResponse]:
    return [e async for e in call]


async def code_of(task: asyncio.Task) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(task, 5)
    return caught.value.code()


async def test_followers_get_the_answer_after_the_leaders_deadline_passed(upstream, tmp_path):
    gateway = Gateway(upstream, tmp_path)
    async with gateway as (app, client):
        leader = asyncio.create_task(collect(client.stream(request("grp"), timeout=0.4)))
        await eventually(lambda: subscribers(app) == 1)
        await asyncio.sleep(0.2)
        follower_started = time.perf_counter()
        follower = asyncio.create_task(collect(client.stream(request("grp"), timeout=10)))
        await eventually(lambda: subscribers(app) == 2)
        assert await code_of(leader) == grpc.StatusCode.DEADLINE_EXCEEDED
        # Only now does the first member fail: its retries and the fallback happen in
        # the follower's time, not in the time of the leader, who has gone.
        upstream.event("release").set()
        result = to_result(await asyncio.wait_for(follower, 5))
        follower_ms = (time.perf_counter() - follower_started) * 1000
        kinds = [e.WhichOneof("event") for e in result.events]
        assert kinds[0] == "start" and kinds[-1] == "done" and set(kinds[1:-1]) == {"delta"}
        assert result.done.model == "ok"
        assert result.text == reply_text(len(upstream.requests), PROMPT)
        assert result.done.cache_status == pb.CACHE_STATUS_MISS and result.done.cost_usd > 0
        assert app.cache.coalescer.flights() == []
    assert gateway.statuses() == [("DEADLINE_EXCEEDED", "miss", False), ("OK", "miss", True)]
    # The follower's own timing, not one counted from the leader's start (0.2 s earlier).
    assert result.done.metadata.response_time_ms <= follower_ms
    served = next(r for r in gateway.rows if r["status"] == "OK")
    assert served["latency_ms"] <= follower_ms


async def test_a_follower_charged_for_a_call_its_leader_started_gets_its_own_timings(
    upstream, tmp_path
):
    gateway = Gateway(upstream, tmp_path)
    async with gateway as (app, client):
        leader = asyncio.create_task(collect(client.stream(request("gated"), timeout=0.4)))
        await eventually(lambda: subscribers(app) == 1)
        await asyncio.sleep(0.2)
        follower_started = time.perf_counter()
        follower = asyncio.create_task(collect(client.stream(request("gated"), timeout=10)))
        await eventually(lambda: subscribers(app) == 2)
        assert await code_of(leader) == grpc.StatusCode.DEADLINE_EXCEEDED
        upstream.event("release").set()
        result = to_result(await asyncio.wait_for(follower, 5))
        follower_ms = (time.perf_counter() - follower_started) * 1000
        assert result.text == reply_text(1, PROMPT) and len(upstream.requests) == 1
        assert result.done.cache_status == pb.CACHE_STATUS_MISS and result.done.cost_usd > 0
        assert result.done.metadata.response_time_ms <= follower_ms
    assert gateway.statuses() == [("DEADLINE_EXCEEDED", "miss", False), ("OK", "miss", True)]
    served = next(r for r in gateway.rows if r["status"] == "OK")
    assert served["latency_ms"] <= follower_ms


async def test_a_follower_with_a_shorter_deadline_times_out_alone(upstream, tmp_path):
    gateway = Gateway(upstream, tmp_path)
    async with gateway as (app, client):
        leader = asyncio.create_task(collect(client.stream(request("gated"))))
        await eventually(lambda: subscribers(app) == 1)
        t0 = time.perf_counter()
        follower = asyncio.create_task(collect(client.stream(request("gated"), timeout=0.3)))
        await eventually(lambda: subscribers(app) == 2)
        assert await code_of(follower) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.perf_counter() - t0 < 1.0
        await eventually(lambda: subscribers(app) == 1)
        upstream.event("release").set()
        result = to_result(await asyncio.wait_for(leader, 5))
        assert result.text == reply_text(1, PROMPT)
        assert result.done.cache_status == pb.CACHE_STATUS_MISS and result.done.cost_usd > 0
        assert len(upstream.requests) == 1 and upstream.disconnects == 0
    assert gateway.statuses() == [("DEADLINE_EXCEEDED", "miss", False), ("OK", "miss", True)]


async def test_shared_callers_are_charged_once(upstream, tmp_path):
    gateway = Gateway(upstream, tmp_path)
    async with gateway as (app, client):
        calls = [asyncio.create_task(collect(client.stream(request("gated")))) for _ in range(3)]
        await eventually(lambda: subscribers(app) == 3)
        upstream.event("release").set()
        await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert len(upstream.requests) == 1
    assert gateway.statuses() == [("OK", "hit", False), ("OK", "hit", False), ("OK", "miss", True)]


async def test_the_shared_call_stops_when_the_last_caller_leaves(upstream, tmp_path):
    async with Gateway(upstream, tmp_path) as (app, client):
        leader = asyncio.create_task(collect(client.stream(request("gated"), timeout=0.3)))
        await eventually(lambda: subscribers(app) == 1)
        follower_call = client.stream(request("gated"))
        follower = asyncio.create_task(collect(follower_call))
        await eventually(lambda: subscribers(app) == 2)
        assert await code_of(leader) == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(0.1)
        assert upstream.disconnects == 0  # the follower still wants it
        follower_call.cancel()
        await asyncio.wait_for(upstream.event("disconnected:gated").wait(), 3)
        assert app.cache.coalescer.flights() == []
        await asyncio.gather(follower, return_exceptions=True)


async def test_a_refusal_in_the_starters_time_is_the_starters_alone():
    """The executor refuses to start a call that cannot end before the deadline of the
    caller that started it; a follower with time left runs the call again in its own."""
    coalescer = Coalescer()
    refuse = asyncio.Event()

    async def too_late():
        await refuse.wait()
        raise DeadlineExceededError("no candidate can finish before the deadline")
        yield  # an async generator, like the executor's stream

    async def in_time():
        yield TextDelta("fine")
        yield Completed("m", "p", Usage(1, 2), FinishReason.STOP, "stop", 0, 0, 0)

    stored: list[str] = []

    def follow(produce) -> asyncio.Task[list[QueryEvent]]:
        def on_completed(events: list[QueryEvent], done: Completed) -> None:
            stored.append(produce.__name__)

        async def consume() -> list[QueryEvent]:
            shared = partial(shared_completed, time.perf_counter())
            return [e async for e in coalescer.follow("k", produce, on_completed, shared)]

        return asyncio.create_task(consume())

    starter, follower = follow(too_late), follow(in_time)
    await eventually(lambda: sum(len(f.subscribers) for f in coalescer.flights()) == 2)
    refuse.set()
    with pytest.raises(DeadlineExceededError):
        await asyncio.wait_for(starter, 2)
    events = await asyncio.wait_for(follower, 2)
    assert [type(e) for e in events] == [TextDelta, Completed]
    # The follower ran the call itself, so it is charged for it, and it stored the answer.
    assert events[-1].cache_status is CacheStatus.MISS and not events[-1].usage.from_cache
    assert stored == ["in_time"] and coalescer.flights() == []


async def test_an_upstream_failure_is_shared_while_its_starter_waits():
    coalescer = Coalescer()
    fail = asyncio.Event()
    calls: list[str] = []

    async def failing():
        calls.append("call")
        await fail.wait()
        raise UpstreamUnavailableError("boom", provider="p")
        yield  # an async generator, like the executor's stream

    async def consume() -> list[QueryEvent]:
        return [e async for e in coalescer.follow("k", failing, lambda *_: None, lambda c, *_: c)]

    tasks = [asyncio.create_task(consume()) for _ in range(3)]
    await eventually(lambda: sum(len(f.subscribers) for f in coalescer.flights()) == 3)
    fail.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailableError) for r in results)
    assert calls == ["call"]
