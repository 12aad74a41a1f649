"""Hedged requests: a late first token starts a second attempt; the first to answer streams
and the other is cancelled at the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import time

from llmproxy.server.core.routing.hedge import HedgeRace
from llmproxy.server.domain import TextDelta
from llmproxy.server.errors import UpstreamUnavailableError
from tests.fakes.openai_fake import PROMPT_TOKENS, REPLY
from tests.routing.scripted import fail, ok, routing_config
from tests.support.running import running_client, settings_for


@contextlib.asynccontextmanager
async def hedged_gateway(upstream, **hedge):
    groups = [
        {
            "name": "g",
            "members": [{"model": "a"}, {"model": "b"}],
            "hedge": {"enabled": True, **hedge},
        }
    ]
    settings = settings_for(routing_config(upstream.base_url, ["a", "b"], groups=groups))
    async with running_client(settings) as (app, client):
        yield app, client


def attempts(done) -> list[tuple[str, str]]:
    return sorted((a.model, a.error_reason) for a in done.attempts)


async def test_a_late_first_token_is_hedged_and_the_slow_attempt_cancelled(upstream):
    upstream.script("a", ok(ttft_s=3.0))
    async with hedged_gateway(upstream, after_ms=100) as (app, client):
        started = time.monotonic()
        result = await client.query("hi", model="g")
        elapsed = time.monotonic() - started
        # The slow attempt's connection is closed, so its upstream sees the disconnect.
        await upstream.wait_for(lambda: upstream.calls_to("a")[0].outcome == "disconnected")
        hedges = app.registry.get_sample_value(
            "llmproxy_hedges_total", {"provider": "scripted", "model": "b"}
        )
    assert hedges == 1
    assert result.done.model == "b" and result.events[0].start.model == "b"
    assert result.text == "".join(REPLY)
    assert elapsed < 1.0
    assert 100 <= result.done.metadata.time_to_first_token_ms < 1000
    assert upstream.models_called() == ["a", "b"]
    assert attempts(result.done) == [("a", "CANCELLED"), ("b", "")]
    # Both attempts sent the prompt: the cancelled one's input is counted, estimated.
    assert result.done.usage.input_tokens > PROMPT_TOKENS
    assert result.done.usage.estimated


async def test_no_hedge_when_the_first_token_is_on_time(upstream):
    async with hedged_gateway(upstream, after_ms=500) as (_, client):
        result = await client.query("hi", model="g")
    assert upstream.models_called() == ["a"]
    assert attempts(result.done) == [("a", "")]
    assert result.done.usage.input_tokens == PROMPT_TOKENS


async def test_a_failing_hedge_leaves_the_primary_to_finish(upstream):
    upstream.script("a", ok(ttft_s=0.3))
    upstream.script("b", fail(503))
    async with hedged_gateway(upstream, after_ms=50) as (_, client):
        result = await client.query("hi", model="g")
    assert result.done.model == "a"
    assert result.text == "".join(REPLY)
    assert attempts(result.done) == [("a", ""), ("b", "UPSTREAM_UNAVAILABLE")]


async def test_the_threshold_can_follow_the_observed_p95_time_to_first_token(upstream):
    upstream.script("a", ok(), ok(), ok(), ok(ttft_s=3.0))
    # Until 3 TTFTs are observed the fixed 5 s applies; then the p95 (milliseconds) does.
    async with hedged_gateway(upstream, after_p95=True, min_samples=3, after_ms=5000) as (
        _,
        client,
    ):
        for _ in range(3):
            assert (await client.query("hi", model="g")).done.model == "a"
        started = time.monotonic()
        result = await client.query("hi", model="g")
    assert result.done.model == "b"
    assert time.monotonic() - started < 1.0


async def test_events_the_loser_queued_before_losing_never_reach_the_caller():
    """Both attempts answer in the same loop turn: the loser's already-queued events
    (text, its end, its failure) must be dropped, not streamed or raised as the winner's."""
    go = asyncio.Event()

    async def primary():
        await go.wait()
        yield TextDelta("p1")
        await asyncio.sleep(0.05)
        yield TextDelta("p2")

    async def backup():
        go.set()
        await asyncio.sleep(0)  # the primary queues its first event, then this one does
        yield TextDelta("b1")
        raise UpstreamUnavailableError("backup broke", provider="x")

    race = HedgeRace(primary(), backup, 0.01)
    got = [e.text async for e in race.events()]
    assert race.winner == 0
    assert got == ["p1", "p2"]
