"""The cache stage of a query: look up, replay, coalesce, and store complete answers.

A request is served from the cache only when a repeat could have produced the
same answer (see `keys.is_cacheable`); everything else passes straight through,
marked BYPASS. Lookups go memory, then Redis, then (opt-in) semantic; a miss
joins an identical call already in flight or starts one; an answer is stored
only once its stream has completed normally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

from llmproxy.server.core.caching.coalescer import Coalescer
from llmproxy.server.core.caching.entry import CachedAnswer, answer_from, replay, storable
from llmproxy.server.core.caching.keys import entry_key, is_cacheable, request_digest
from llmproxy.server.core.caching.redis_tier import RedisTier
from llmproxy.server.core.caching.tiers import ExactCache
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CacheMode,
    CacheStatus,
    Completed,
    QueryEvent,
    QueryInput,
    TextDelta,
)

if TYPE_CHECKING:
    # The semantic cache needs numpy and the model (the optional `semantic` extra).
    from llmproxy.server.core.caching.semantic import Probe, SemanticCache

log = logging.getLogger(__name__)

EventStream = AsyncIterator[QueryEvent]


async def marked(events: EventStream, status: CacheStatus) -> EventStream:
    async for event in events:
        if type(event) is Completed:
            event.cache_status = status
        yield event


def shared_completed(
    started: float, completed: Completed, first_at: float | None, billed: bool
) -> Completed:
    """A coalesced caller's own Completed: its timings, and usage that cost it nothing
    unless it is the one charged for the call (its starter having left)."""
    now = time.perf_counter()
    response_time_ms = int((now - started) * 1000)
    time_to_first_token_ms = int(((first_at or now) - started) * 1000)
    if billed:
        return replace(
            completed,
            response_time_ms=response_time_ms,
            time_to_first_token_ms=time_to_first_token_ms,
        )
    return replace(
        completed,
        usage=replace(completed.usage, from_cache=True),
        response_time_ms=response_time_ms,
        time_to_first_token_ms=time_to_first_token_ms,
        attempts=[],
        cache_status=CacheStatus.HIT,
    )


class ResponseCache:
    def __init__(
        self,
        exact: ExactCache | None,
        *,
        prefix: str,
        semantic: SemanticCache | None = None,
        semantic_models: frozenset[str] = frozenset(),
        coalescer: Coalescer | None = None,
        redis: RedisTier | None = None,
    ) -> None:
        self.exact = exact
        self.prefix = prefix
        self.semantic = semantic
        self.semantic_models = semantic_models
        self.coalescer = coalescer
        self.redis = redis

    def stream(
        self, query: QueryInput, candidates: list[Deployment], produce: Callable[[], EventStream]
    ) -> EventStream:
        if query.cache.mode is CacheMode.BYPASS or not candidates or not is_cacheable(query):
            return marked(produce(), CacheStatus.BYPASS)
        return self._serve(query, candidates, produce)

    def _wants_semantic(self, query: QueryInput, candidates: list[Deployment]) -> bool:
        return self.semantic is not None and (
            query.cache.semantic
            or query.model in self.semantic_models
            or candidates[0].name in self.semantic_models
        )

    async def _serve(
        self, query: QueryInput, candidates: list[Deployment], produce: Callable[[], EventStream]
    ) -> EventStream:
        started = time.perf_counter()
        digest = request_digest(query.messages, query.params)
        refresh = query.cache.mode is CacheMode.REFRESH
        flight_key = "\0".join([digest, *(d.name for d in candidates)])
        probe: Probe | None = None
        if not refresh:
            answer = await self._lookup(candidates, digest)
            if answer is not None:
                async for event in replay(answer, CacheStatus.HIT, started):
                    yield event
                return
            # The very same request in flight beats a semantic neighbour: join it at once.
            coalescer = self.coalescer
            in_flight = coalescer is not None and coalescer.join(flight_key) is not None
            if not in_flight and self._wants_semantic(query, candidates):
                assert self.semantic is not None
                probe = await self.semantic.probe(query, candidates)
                if probe is not None and probe.answer is not None:
                    status = CacheStatus.SEMANTIC_HIT
                    async for event in replay(probe.answer, status, started, probe.similarity):
                        yield event
                    return
        elif self._wants_semantic(query, candidates):
            # A refresh replaces the semantic entry too, so it needs the prompt's vector.
            assert self.semantic is not None
            probe = await self.semantic.probe(query, candidates)
        store = partial(self._store, candidates, digest, probe)
        if self.coalescer is not None and not refresh:
            async for event in self.coalescer.follow(
                flight_key,
                produce,
                lambda events, done: store(_text_of(events), done),
                partial(shared_completed, started),
            ):
                yield event
            return
        status = CacheStatus.REFRESH if refresh else CacheStatus.MISS
        parts: list[str] = []
        async for event in produce():
            if type(event) is TextDelta:
                parts.append(event.text)
            elif type(event) is Completed:
                event.cache_status = status
                store("".join(parts), event)
            yield event

    async def _lookup(self, candidates: list[Deployment], digest: str) -> CachedAnswer | None:
        if self.exact is None:
            return None
        keys = [entry_key(self.prefix, digest, d) for d in candidates]
        return self.exact.get_local(keys) or await self.exact.get_shared(keys)

    def _store(
        self,
        candidates: list[Deployment],
        digest: str,
        probe: Probe | None,
        text: str,
        completed: Completed,
    ) -> None:
        """Store under the deployment that answered; a failure here never fails the request."""
        if self.exact is None and (probe is None or self.semantic is None):
            return  # coalescing only: nothing to keep
        if not storable(completed, text):
            return
        deployment = next((d for d in candidates if d.name == completed.model), None)
        if deployment is None:
            return
        try:
            answer = answer_from(completed, text)
            if self.exact is not None:
                data = self.exact.put(entry_key(self.prefix, digest, deployment), answer)
            else:
                data = answer.encode()
            if probe is not None and self.semantic is not None:
                self.semantic.store(probe, deployment, digest, answer, data)
        except Exception:
            log.exception("storing a cached answer failed")

    async def close(self) -> None:
        if self.semantic is not None:
            self.semantic.embedder.close()
        if self.redis is not None:
            await self.redis.close()


def _text_of(events: list[QueryEvent]) -> str:
    return "".join(e.text for e in events if type(e) is TextDelta)
