"""The semantic cache: threshold, the multi-turn rule, the shared tier, and its measured quality.

Uses the real all-MiniLM-L6-v2 from the `semantic` extra (loaded once per process,
from site-packages, with the hub offline) except where exact vectors are needed.
"""

from __future__ import annotations

import asyncio
import math
import os

import numpy as np
import pytest

from llmproxy.client.client import build_query_request, to_result
from llmproxy.server.core.caching.embedder import DIM, MiniLMEmbedder
from llmproxy.server.core.caching.entry import CachedAnswer
from llmproxy.server.core.caching.semantic import SemanticCache
from llmproxy.server.core.caching.vectors import VectorIndex
from llmproxy.server.domain import (
    FinishReason,
    Message,
    Parameters,
    QueryInput,
    Role,
)
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.caching.conftest import REDIS_URL, eventually, gateway_config
from tests.caching.fake_llm import reply_text
from tests.caching.paraphrases import NON_PARAPHRASES, PARAPHRASES
from tests.caching.test_units import deployment
from tests.support.running import running_client, settings_for

DEFAULT_THRESHOLD = 0.92
SEMANTIC = pb.CacheOptions(semantic=True)


@pytest.fixture(scope="module")
def embedder():
    model = MiniLMEmbedder()
    yield model
    model.close()


def answer(text: str) -> CachedAnswer:
    return CachedAnswer("ok", "fake", text, FinishReason.STOP, "stop", 1, 1, 0, False, 0.0)


def query(*turns: tuple[str, str], temperature: float = 0.0) -> QueryInput:
    messages = tuple(Message(Role(role), text) for role, text in turns)
    return QueryInput(messages, model="ok", params=Parameters(temperature=temperature))


def cache_with(embedder, threshold: float = DEFAULT_THRESHOLD) -> SemanticCache:
    return SemanticCache(
        embedder,
        VectorIndex(embedder.dim, 100),
        None,
        threshold=threshold,
        ttl_s=60,
        prefix="t:",
        max_per_set=16,
    )


async def remember(cache: SemanticCache, q: QueryInput, text: str) -> None:
    probe = await cache.probe(q, [deployment("ok")])
    assert probe is not None and probe.answer is None
    cache.store(probe, deployment("ok"), text, answer(text), b"")


async def lookup(cache: SemanticCache, q: QueryInput):
    probe = await cache.probe(q, [deployment("ok")])
    return None if probe is None or probe.answer is None else (probe.answer.text, probe.similarity)


class FixedEmbedder:
    """Hands out chosen vectors, to put a similarity exactly on the threshold."""

    dim = 2

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
        self.calls = 0

    async def embed(self, text: str):
        self.calls += 1
        return self.vectors[text]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("threshold", "hit"), [(0.75, True), (0.7500001, False)])
async def test_match_at_and_just_above_the_threshold(threshold, hit):
    # cos(a, b) is exactly 0.75 in float32.
    embedder = FixedEmbedder({"a": [1.0, 0.0], "b": [0.75, math.sqrt(1 - 0.75**2)]})
    cache = cache_with(embedder, threshold)
    await remember(cache, query(("user", "a")), "answer-a")
    found = await lookup(cache, query(("user", "b")))
    assert (found is not None) == hit
    if hit:
        assert found == ("answer-a", 0.75)


async def test_multi_turn_only_the_last_user_turn_may_differ(embedder):
    cache = cache_with(embedder)
    history = [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello.")]
    await remember(cache, query(*history, ("user", "What is the capital of France?")), "Paris.")
    same_history = query(*history, ("user", "Which city is the capital of France?"))
    assert (await lookup(cache, same_history))[0] == "Paris."
    # An earlier turn that differs, even slightly, never matches.
    other_assistant = [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello!")]
    assert (
        await lookup(
            cache, query(*other_assistant, ("user", "Which city is the capital of France?"))
        )
        is None
    )
    other_system = [("system", "You are verbose."), ("user", "Hi"), ("assistant", "Hello.")]
    assert (
        await lookup(cache, query(*other_system, ("user", "Which city is the capital of France?")))
        is None
    )
    # Nor do other parameters.
    hot = query(*history, ("user", "Which city is the capital of France?"), temperature=0.5)
    assert await lookup(cache, hot) is None
    # A conversation ending on an assistant turn is never matched semantically.
    assert (
        await cache.probe(query(("user", "Hi"), ("assistant", "Paris.")), [deployment("ok")])
        is None
    )


async def test_reordered_words_never_match_whatever_the_score(embedder):
    cache = cache_with(embedder, threshold=0.5)
    await remember(
        cache, query(("user", "How do I convert a string to an integer in Python?")), "int(s)"
    )
    flipped = query(("user", "How do I convert an integer to a string in Python?"))
    assert await lookup(cache, flipped) is None
    same_words_same_order = query(("user", "how do I convert a string to an integer in python"))
    assert (await lookup(cache, same_words_same_order))[0] == "int(s)"


async def test_prompts_past_the_model_window_are_not_matched(embedder):
    cache = cache_with(embedder, threshold=0.5)
    long_prompt = "word " * 400
    probe = await cache.probe(query(("user", long_prompt)), [deployment("ok")])
    assert probe is not None and probe.vector is None and probe.answer is None


async def test_measured_hit_rate_and_false_hit_rate(embedder, capsys):
    """Each pair in a fresh cache: store the first prompt, look up the second."""
    hits = false_hits = 0
    for first, second in PARAPHRASES:
        cache = cache_with(embedder)
        await remember(cache, query(("user", first)), "A")
        hits += await lookup(cache, query(("user", second))) is not None
    for first, second in NON_PARAPHRASES:
        cache = cache_with(embedder)
        await remember(cache, query(("user", first)), "A")
        false_hits += await lookup(cache, query(("user", second))) is not None
    hit_rate = hits / len(PARAPHRASES)
    false_hit_rate = false_hits / len(NON_PARAPHRASES)
    with capsys.disabled():
        print(
            f"\nsemantic cache at threshold {DEFAULT_THRESHOLD}: hit rate {hit_rate:.0%} "
            f"({hits}/{len(PARAPHRASES)} paraphrases), false-hit rate {false_hit_rate:.0%} "
            f"({false_hits}/{len(NON_PARAPHRASES)} non-paraphrases)"
        )
    # Measured with all-MiniLM-L6-v2: 65% and 5% (the one false hit: synonym vs antonym).
    assert hit_rate >= 0.6
    assert false_hit_rate <= 0.05


# --- Through the gateway ----------------------------------------------------------


async def ask(client, prompt: str, cache: pb.CacheOptions | None = None, model: str = "ok"):
    request = build_query_request(prompt, model=model, temperature=0.0, cache=cache)
    return to_result([e async for e in client.stream(request)])


def semantic_config(base_url: str, **semantic) -> dict:
    return gateway_config(base_url, cache={"semantic": {"enabled": True, **semantic}})


async def test_paraphrase_is_a_semantic_hit_with_its_similarity(upstream):
    async with running_client(settings_for(semantic_config(upstream.base_url))) as (_, client):
        first = await ask(client, "What is the capital of France?", SEMANTIC)
        assert first.done.cache_status == pb.CACHE_STATUS_MISS
        hit = await ask(client, "Which city is the capital of France?", SEMANTIC)
        assert hit.done.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
        assert 0.92 <= hit.done.cache_similarity < 1.0
        assert hit.text == first.text == reply_text(1, "What is the capital of France?")
        kinds = [e.WhichOneof("event") for e in hit.events]
        assert kinds[0] == "start" and kinds[-1] == "done"
        other = await ask(client, "What is the capital of Germany?", SEMANTIC)
        assert other.done.cache_status == pb.CACHE_STATUS_MISS
        assert other.done.cache_similarity == 0.0
    assert len(upstream.requests) == 2


async def test_refresh_replaces_the_semantic_entry_too(upstream):
    async with running_client(settings_for(semantic_config(upstream.base_url))) as (_, client):
        await ask(client, "Who wrote Pride and Prejudice?", SEMANTIC)
        refresh = pb.CacheOptions(mode=pb.CACHE_MODE_REFRESH, semantic=True)
        fresh = await ask(client, "Who wrote Pride and Prejudice?", refresh)
        assert fresh.done.cache_status == pb.CACHE_STATUS_REFRESH
        hit = await ask(client, "Who is the author of Pride and Prejudice?", SEMANTIC)
        assert hit.done.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
        assert hit.text == fresh.text == reply_text(2, "Who wrote Pride and Prejudice?")


async def test_requests_that_did_not_opt_in_never_embed(upstream):
    async with running_client(settings_for(semantic_config(upstream.base_url))) as (app, client):
        counting = FixedEmbedder({})
        real = app.cache.semantic.embedder
        app.cache.semantic.embedder = counting
        try:
            await ask(client, "What is the capital of France?")
            result = await ask(client, "Which city is the capital of France?")
        finally:
            app.cache.semantic.embedder = real
        assert result.done.cache_status == pb.CACHE_STATUS_MISS
        assert counting.calls == 0


async def test_an_identical_request_in_flight_is_joined_without_embedding(upstream):
    async with running_client(settings_for(semantic_config(upstream.base_url))) as (app, client):
        counting = FixedEmbedder({"same": [1.0, 0.0]})
        app.cache.semantic.embedder.close()
        app.cache.semantic.embedder = counting
        app.cache.semantic.index = VectorIndex(2, 10)
        first = asyncio.create_task(ask(client, "same", SEMANTIC, model="gated"))
        await eventually(lambda: len(upstream.requests) == 1)
        second = asyncio.create_task(ask(client, "same", SEMANTIC, model="gated"))
        await eventually(
            lambda: sum(len(f.subscribers) for f in app.cache.coalescer.flights()) == 2
        )
        upstream.event("release").set()
        results = await asyncio.gather(first, second)
        assert results[0].text == results[1].text
        assert counting.calls == 1 and len(upstream.requests) == 1


async def test_model_opted_in_by_config(upstream):
    config = semantic_config(upstream.base_url, models=["ok"])
    async with running_client(settings_for(config)) as (_, client):
        await ask(client, "How many legs does a spider have?")
        hit = await ask(client, "How many legs do spiders have?")
        assert hit.done.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
        other_model = await ask(client, "How many legs do spiders have?", model="ok2")
        assert other_model.done.cache_status == pb.CACHE_STATUS_MISS


async def test_semantic_answers_are_shared_through_redis(upstream, redis_prefix):
    cache = {
        "exact": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": redis_prefix},
        "semantic": {"enabled": True, "models": ["ok"]},
    }
    settings = settings_for(gateway_config(upstream.base_url, cache=cache))
    async with (
        running_client(settings) as (app_a, client_a),
        running_client(settings) as (app_b, client_b),
    ):
        first = await ask(client_a, "Who painted the Mona Lisa?")
        await app_a.cache.redis.flush()
        assert len(app_b.cache.semantic.index) == 0
        hit = await ask(client_b, "Which artist painted the Mona Lisa?")
        assert hit.done.cache_status == pb.CACHE_STATUS_SEMANTIC_HIT
        assert hit.text == first.text
        assert len(app_b.cache.semantic.index) == 1
    assert len(upstream.requests) == 1


async def test_embedding_is_unit_length_and_offline(embedder):
    vector = await embedder.embed("hello world")
    assert vector.shape == (DIM,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
