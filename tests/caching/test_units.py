"""The cache's parts on their own: keys, the memory tier, the coalescer's edge cases."""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot

from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.core.caching.coalescer import Coalescer
from llmproxy.server.core.caching.entry import CachedAnswer, storable
from llmproxy.server.core.caching.keys import (
    entry_key,
    is_cacheable,
    request_digest,
    semantic_answer_key,
    vector_set_key,
)
from llmproxy.server.core.caching.memory import ENTRY_OVERHEAD, MemoryTier
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CacheOptions,
    Completed,
    FinishReason,
    Message,
    Parameters,
    QueryInput,
    Role,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import UpstreamUnavailableError


class _Provider:
    name = "p"


def deployment(name: str, upstream: str = "") -> Deployment:
    config = ModelConfig(name=name, provider="p", upstream_model=upstream)
    return Deployment(config, _Provider())  # type: ignore[arg-type]


def answer(text: str = "hello") -> CachedAnswer:
    return CachedAnswer("m", "p", text, FinishReason.STOP, "stop", 3, 4, 0, False, 0.0)


MESSAGES = (Message(Role.USER, "hi"),)


def test_digest_covers_what_changes_the_output_and_nothing_else():
    base = request_digest(MESSAGES, Parameters(temperature=0.0))
    assert base == request_digest(MESSAGES, Parameters(temperature=0.0))
    for params in (
        Parameters(temperature=0.5),
        Parameters(temperature=0.0, max_tokens=5),
        Parameters(temperature=0.0, top_p=0.5),
        Parameters(temperature=0.0, stop=("x",)),
        Parameters(temperature=0.0, seed=1),
    ):
        assert request_digest(MESSAGES, params) != base
    assert request_digest((Message(Role.SYSTEM, "hi"),), Parameters(temperature=0.0)) != base
    assert request_digest((Message(Role.USER, "hi "),), Parameters(temperature=0.0)) != base
    # Turn boundaries count: ("ab",) is not ("a", "b").
    one = (Message(Role.USER, "ab"),)
    two = (Message(Role.USER, "a"), Message(Role.USER, "b"))
    assert request_digest(one, Parameters()) != request_digest(two, Parameters())


def test_cacheable_only_when_repeatable_or_opted_in():
    def query(params: Parameters, allow: bool = False) -> QueryInput:
        return QueryInput(MESSAGES, params=params, cache=CacheOptions(allow_nondeterministic=allow))

    assert is_cacheable(query(Parameters(temperature=0.0)))
    assert is_cacheable(query(Parameters(temperature=1.2, seed=3)))
    assert not is_cacheable(query(Parameters()))
    assert not is_cacheable(query(Parameters(temperature=0.3)))
    assert is_cacheable(query(Parameters(temperature=0.3), allow=True))


def test_every_key_of_one_request_lands_in_one_cluster_slot():
    digest = request_digest(MESSAGES, Parameters(temperature=0.0))
    keys = [entry_key("pfx:", digest, deployment(n)) for n in ("a", "b", "c-{weird}")]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    set_key = vector_set_key("pfx:", digest, deployment("a"))
    assert key_slot(semantic_answer_key(set_key, "abc").encode()) == key_slot(set_key.encode())
    # The upstream model is part of the key: re-pointing a model orphans its old answers.
    assert entry_key("p:", digest, deployment("a", "x")) != entry_key("p:", digest, deployment("a"))


def test_entry_round_trips_and_rejects_garbage():
    a = answer("héllo ✓")
    assert CachedAnswer.decode(a.encode()) == a
    assert CachedAnswer.decode(b"not json") is None
    assert CachedAnswer.decode(b"[1, 2]") is None


def test_only_complete_answers_are_storable():
    def done(reason: FinishReason) -> Completed:
        return Completed("m", "p", Usage(), reason, "", 0, 0, 0)

    assert storable(done(FinishReason.STOP), "x")
    assert storable(done(FinishReason.LENGTH), "x")
    assert not storable(done(FinishReason.CONTENT_FILTER), "x")
    assert not storable(done(FinishReason.OTHER), "x")
    assert not storable(done(FinishReason.STOP), "")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_ttl_expiry():
    clock = Clock()
    tier = MemoryTier(10_000, clock=clock)
    tier.put("k", answer(), 100, ttl_s=5)
    clock.now += 4.9
    assert tier.get("k") is not None
    clock.now += 0.2
    assert tier.get("k") is None
    assert tier.bytes_used == 0 and len(tier) == 0


def test_memory_lru_eviction_by_bytes():
    size = 100 + 2 + ENTRY_OVERHEAD  # entry + key + overhead
    tier = MemoryTier(size * 3)
    for key in ("k1", "k2", "k3"):
        assert tier.put(key, answer(key), 100, ttl_s=60)
    assert tier.get("k1") is not None  # k2 is now the least recently used
    tier.put("k4", answer(), 100, ttl_s=60)
    assert [k for k in ("k1", "k2", "k3", "k4") if tier.get(k)] == ["k1", "k3", "k4"]
    assert tier.bytes_used == size * 3
    # A bigger entry evicts as many as it needs.
    tier.put("k5", answer(), 100 + size, ttl_s=60)
    assert tier.bytes_used <= size * 3 and tier.get("k5") is not None
    # An entry larger than the whole bound is refused and evicts nothing.
    before = len(tier)
    assert not tier.put("huge", answer(), size * 3, ttl_s=60)
    assert len(tier) == before


def test_memory_replacing_a_key_keeps_the_byte_count_right():
    tier = MemoryTier(100_000)
    tier.put("k", answer(), 100, ttl_s=60)
    tier.put("k", answer(), 300, ttl_s=60)
    assert tier.bytes_used == 300 + 1 + ENTRY_OVERHEAD and len(tier) == 1


async def test_coalescer_shares_an_error_with_every_caller():
    gate = asyncio.Event()

    async def produce():
        yield Started("m", "p")
        await gate.wait()
        raise UpstreamUnavailableError("boom", provider="p")

    coalescer = Coalescer()

    async def caller():
        return [e async for e in coalescer.follow("k", produce, lambda *_: None, lambda c, *_: c)]

    tasks = [asyncio.create_task(caller()) for _ in range(3)]
    await asyncio.sleep(0.01)
    flight = coalescer.join("k")
    assert flight is not None and len(flight.subscribers) == 3
    gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, UpstreamUnavailableError) for r in results)
    assert coalescer.flights() == []


async def test_coalescer_stores_once_and_only_on_completion():
    stored: list[str] = []

    async def produce():
        yield Started("m", "p")
        yield TextDelta("a")
        yield TextDelta("b")
        yield Completed("m", "p", Usage(1, 2), FinishReason.STOP, "stop", 0, 0, 0)

    coalescer = Coalescer()

    def on_completed(events, done):
        stored.append("".join(e.text for e in events if type(e) is TextDelta))

    seen = [
        [e async for e in coalescer.follow("k", produce, on_completed, lambda c, *_: c)],
    ]
    assert stored == ["ab"] and len(seen[0]) == 4


async def test_last_caller_leaving_cancels_the_shared_call():
    cancelled = asyncio.Event()

    async def produce():
        yield Started("m", "p")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield TextDelta("never")

    coalescer = Coalescer()
    stream = coalescer.follow("k", produce, lambda *_: None, lambda c, *_: c)
    assert type(await anext(stream)) is Started
    # A newcomer never joins a call that is being abandoned.
    await stream.aclose()
    assert coalescer.join("k") is None
    await asyncio.wait_for(cancelled.wait(), 1)


@pytest.mark.parametrize("text", ["", "x" * 40_000])
async def test_replay_chunks_long_answers(text):
    from llmproxy.server.core.caching.entry import REPLAY_CHUNK, replay
    from llmproxy.server.domain import CacheStatus

    events = [e async for e in replay(answer(text), CacheStatus.HIT, 0.0)]
    deltas = [e.text for e in events if type(e) is TextDelta]
    assert "".join(deltas) == text
    assert all(len(d) <= REPLAY_CHUNK for d in deltas)
    assert type(events[0]) is Started and type(events[-1]) is Completed
    assert events[-1].usage.from_cache
