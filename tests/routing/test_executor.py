"""The executor's bookkeeping with in-memory providers: breakers, in-flight counts and
skips stay consistent however an attempt ends."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from llmproxy.server.config import Settings
from llmproxy.server.core.catalog import Catalog, build_deployments
from llmproxy.server.core.executor import Executor
from llmproxy.server.core.router import Router
from llmproxy.server.core.routing.breaker import CircuitState
from llmproxy.server.domain import (
    CallContext,
    ChatRequest,
    Completed,
    Finish,
    FinishReason,
    Message,
    ProviderEvent,
    QueryInput,
    Role,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import UpstreamContextTooLongError
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.keys import KeyPool

Behaviour = Callable[[], Awaitable[None]]


class MemoryProvider(Provider):
    """Each model name has a coroutine run before the answer (sleep, raise...)."""

    uses_http = False

    def __init__(self, before: dict[str, Behaviour]) -> None:
        super().__init__(ProviderSettings(name="memory", type="memory"), None, KeyPool([]))
        self.before = before
        self.calls: list[str] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.calls.append(request.model)
        if (before := self.before.get(request.model)) is not None:
            await before()
        yield TextDelta("hi")
        yield TextDelta(" there")
        yield Finish(FinishReason.STOP, "stop", Usage(3, 2))


def table(before: dict[str, Behaviour], models, groups) -> tuple[Router, MemoryProvider]:
    specs = [{"name": m, "provider": "memory"} if isinstance(m, str) else m for m in models]
    settings = Settings(
        providers=[{"name": "memory", "type": "mock"}],
        models=specs,
        groups=groups,
        resilience={"circuit_breaker": {"consecutive_failures": 1, "cooldown_s": 0}},
    )
    provider = MemoryProvider(before)
    deployments = build_deployments(settings.models, {"memory": provider}, settings.resilience)
    catalog = Catalog(
        deployments, settings.groups, settings.routing, settings.resilience, rng=random.Random(1)
    )
    return Router(catalog), provider


QUERY = QueryInput((Message(Role.USER, "hello"),), model="g")


async def run(router: Router, executor: Executor | None = None) -> list:
    executor = executor or Executor()
    ctx = CallContext()
    return [e async for e in executor.stream(router.plan(QUERY, ctx), QUERY, ctx)]


def sleep(seconds: float) -> Behaviour:
    async def before() -> None:
        await asyncio.sleep(seconds)

    return before


def raise_(error: Exception) -> Behaviour:
    async def before() -> None:
        raise error

    return before


async def test_a_cancelled_hedge_releases_its_half_open_probe():
    router, _ = table(
        {"a": sleep(0.05), "b": sleep(1.0)},
        ["a", "b"],
        [
            {
                "name": "g",
                "members": [{"model": "a"}, {"model": "b"}],
                "hedge": {"enabled": True, "after_ms": 10},
            }
        ],
    )
    b = router.catalog.deployments["b"]
    b.breaker.record_failure()  # open; cooldown 0: the next call is a half-open probe
    events = await run(router)
    done = events[-1]
    assert isinstance(done, Completed) and done.model == "a"
    assert sorted((a.model, a.error_reason) for a in done.attempts) == [
        ("a", ""),
        ("b", "CANCELLED"),
    ]
    assert b.breaker.state is CircuitState.HALF_OPEN and b.breaker.probes == 0
    assert b.stats.in_flight == 0 and router.catalog.deployments["a"].stats.in_flight == 0
    assert router.catalog.active == 0


async def test_a_circuit_that_opens_after_planning_is_skipped_without_a_call():
    router, provider = table(
        {}, ["a", "b"], [{"name": "g", "members": [{"model": "a"}, {"model": "b"}]}]
    )
    plan = router.plan(QUERY, CallContext())
    router.catalog.deployments["a"].breaker.record_failure()  # opens, cooldown 0 -> probe...
    router.catalog.deployments["a"].breaker.acquire()  # ...which someone else holds
    events = [e async for e in Executor().stream(plan, QUERY, CallContext())]
    assert events[-1].model == "b"
    assert [a.model for a in events[-1].attempts] == ["b"]
    assert provider.calls == ["b"]


async def test_context_too_long_still_reaches_a_larger_model_after_a_skipped_one():
    router, provider = table(
        {"small": raise_(UpstreamContextTooLongError("too long", provider="memory"))},
        [
            {"name": "small", "provider": "memory", "context_window": 8000},
            {"name": "huge", "provider": "memory", "context_window": 200000},
            {"name": "mid", "provider": "memory", "context_window": 32000},
        ],
        [{"name": "g", "members": [{"model": "small"}, {"model": "huge"}, {"model": "mid"}]}],
    )
    plan = router.plan(QUERY, CallContext())
    huge = router.catalog.deployments["huge"].breaker
    huge.record_failure()
    huge.acquire()  # its only probe slot is taken: skipped at attempt time
    events = [e async for e in Executor().stream(plan, QUERY, CallContext())]
    assert events[-1].model == "mid"
    assert provider.calls == ["small", "mid"]


async def test_a_caller_leaving_mid_stream_releases_everything():
    router, _ = table({}, ["a"], [{"name": "g", "members": [{"model": "a"}]}])
    a = router.catalog.deployments["a"]
    a.breaker.record_failure()  # half-open on the next call
    stream = Executor().stream(router.plan(QUERY, CallContext()), QUERY, CallContext())
    assert type(await anext(stream)).__name__ == "Started"
    assert a.stats.in_flight == 1 and a.breaker.probes == 1
    await stream.aclose()
    assert a.stats.in_flight == 0 and a.breaker.probes == 0
    assert router.catalog.active == 0


@pytest.mark.parametrize("fails", [True, False])
async def test_the_catalog_counts_running_executions(fails):
    error = UpstreamContextTooLongError("x", provider="memory")
    router, _ = table(
        {"a": raise_(error)} if fails else {}, ["a"], [{"name": "g", "members": [{"model": "a"}]}]
    )
    if fails:
        with pytest.raises(UpstreamContextTooLongError):
            await run(router)
    else:
        await run(router)
    assert router.catalog.active == 0


async def test_proxy_overhead_counts_time_spent_downstream_not_upstream_waits():
    async def slow_upstream() -> None:
        await asyncio.sleep(0.1)

    router, _ = table({"a": slow_upstream}, ["a"], [])
    query = QueryInput((Message(Role.USER, "hello"),), model="a")
    ctx = CallContext()
    events = []
    async for event in Executor().stream(router.plan(query, ctx), query, ctx):
        events.append(event)
        if type(event) is TextDelta:
            await asyncio.sleep(0.03)  # a slow caller: the gateway's time, not upstream's
    done = events[-1]
    assert type(done) is Completed
    # Two deltas held downstream ~30 ms each; the 100 ms upstream wait is excluded.
    assert 55_000 <= done.proxy_overhead_us < 95_000
    assert done.response_time_ms >= 155


class SilentProvider(MemoryProvider):
    """Answers with no text at all (a content filter, max_tokens 0): only a Finish."""

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.calls.append(request.model)
        yield Finish(FinishReason.STOP, "stop", Usage(3, 0))


async def test_a_caller_leaving_before_an_empty_answer_completes_releases_the_probe():
    settings = Settings(
        providers=[{"name": "memory", "type": "mock"}],
        models=[{"name": "a", "provider": "memory"}],
        resilience={"circuit_breaker": {"consecutive_failures": 1, "cooldown_s": 0}},
    )
    provider = SilentProvider({})
    deployments = build_deployments(settings.models, {"memory": provider}, settings.resilience)
    router = Router(Catalog(deployments, settings.groups, settings.routing, settings.resilience))
    a = router.catalog.deployments["a"]
    a.breaker.record_failure()  # half-open on the next call
    query = QueryInput((Message(Role.USER, "hello"),), model="a")
    stream = Executor().stream(router.plan(query, CallContext()), query, CallContext())
    assert type(await anext(stream)).__name__ == "Started"
    await stream.aclose()
    # The upstream answered: its outcome counts, and the probe slot is not held forever.
    assert a.breaker.probes == 0 and a.breaker.state is CircuitState.CLOSED
    assert a.stats.in_flight == 0 and router.catalog.active == 0


class EagerProvider(MemoryProvider):
    """Its first delta offers the text that arrived while the start event was written."""

    def __init__(self) -> None:
        super().__init__({})
        self.offered: list[str] = [" there", ""]

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        yield TextDelta("hi", more=lambda: self.offered.pop(0))
        yield TextDelta("!")
        yield Finish(FinishReason.STOP, "stop", Usage(3, 3))


async def test_text_that_arrived_during_the_start_event_goes_out_with_the_first_delta():
    router, _ = table({}, ["a"], [{"name": "g", "members": [{"model": "a"}]}])
    provider = EagerProvider()
    for deployment in router.catalog.deployments.values():
        deployment.provider = provider
    events = await run(router)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Started", "TextDelta", "TextDelta", "Completed"]
    assert [e.text for e in events if type(e) is TextDelta] == ["hi there", "!"]
    assert all(e.more is None for e in events if type(e) is TextDelta)  # nothing leaks on
    assert provider.offered == [""]  # asked once, right after the start event
