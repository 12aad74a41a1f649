"""A cached answer: what is stored, how it is serialised, and how it is replayed as a stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from llmproxy.server.domain import (
    CacheStatus,
    Completed,
    FinishReason,
    QueryEvent,
    Started,
    TextDelta,
    Usage,
)

# Only complete, usable answers are stored: never a content-filtered or unknown ending.
STORABLE_FINISH = frozenset({FinishReason.STOP, FinishReason.LENGTH})
# A replayed answer is cut into deltas of at most this many characters, so a long
# answer never becomes one oversized gRPC message.
REPLAY_CHUNK = 16_384


@dataclass(slots=True, frozen=True)
class CachedAnswer:
    model: str
    provider: str
    text: str
    finish_reason: FinishReason
    raw_finish_reason: str
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    estimated: bool
    # Wall-clock time of storing, so every replica agrees on the entry's age.
    created_at: float

    def encode(self) -> bytes:
        return orjson.dumps(
            [
                self.model,
                self.provider,
                self.text,
                self.finish_reason.value,
                self.raw_finish_reason,
                self.input_tokens,
                self.output_tokens,
                self.cached_input_tokens,
                self.estimated,
                self.created_at,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> CachedAnswer | None:
        """None for anything unreadable (another version's entry, a corrupt value)."""
        try:
            m, p, text, finish, raw, i, o, ci, est, created = orjson.loads(data)
            return cls(m, p, text, FinishReason(finish), raw, i, o, ci, bool(est), created)
        except (ValueError, TypeError):
            return None


def storable(completed: Completed, text: str) -> bool:
    """Never store an error, a content-filtered answer or an empty one."""
    return completed.finish_reason in STORABLE_FINISH and bool(text)


def answer_from(completed: Completed, text: str) -> CachedAnswer:
    usage = completed.usage
    return CachedAnswer(
        model=completed.model,
        provider=completed.provider,
        text=text,
        finish_reason=completed.finish_reason,
        raw_finish_reason=completed.raw_finish_reason,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        estimated=usage.estimated,
        created_at=time.time(),
    )


async def replay(
    answer: CachedAnswer, status: CacheStatus, started_at: float, similarity: float = 0.0
) -> AsyncIterator[QueryEvent]:
    """The same event shape as a live answer: Started, TextDelta(s), Completed."""
    yield Started(answer.model, answer.provider)
    text = answer.text
    first_at = time.perf_counter()
    for i in range(0, len(text), REPLAY_CHUNK):
        yield TextDelta(text[i : i + REPLAY_CHUNK])
    now = time.perf_counter()
    elapsed_us = int((now - started_at) * 1_000_000)
    yield Completed(
        model=answer.model,
        provider=answer.provider,
        usage=Usage(
            answer.input_tokens,
            answer.output_tokens,
            answer.cached_input_tokens,
            answer.estimated,
            from_cache=True,
        ),
        finish_reason=answer.finish_reason,
        raw_finish_reason=answer.raw_finish_reason,
        response_time_ms=elapsed_us // 1000,
        time_to_first_token_ms=int((first_at - started_at) * 1000),
        # No upstream call: all of the time is the gateway's own.
        proxy_overhead_us=elapsed_us,
        cache_status=status,
        cache_similarity=similarity,
    )
