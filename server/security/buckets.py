"""Token buckets for rate limits: the shared semantics and the in-process backend.

A bucket holds at most `capacity` (one minute's allowance) and refills at
`capacity / 60` per second; a missing bucket is a full one. `take` checks every
bucket of a request and charges all of them only if all allow it, so a refused
request costs nothing. A charge larger than the capacity is allowed from a full
bucket (the bucket goes into debt), so no single request is refused forever.
`adjust` settles a charge later (e.g. estimated prompt tokens vs. the real usage).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# Keep the in-process table bounded: past this many buckets, drop the full ones.
MAX_BUCKETS = 100_000


@dataclass(slots=True, frozen=True)
class Bucket:
    key: str
    capacity: float
    cost: float
    # For errors and metrics: which limit ("requests" | "tokens"), on what ("key" | "model").
    limit: str
    scope: str
    subject: str

    @property
    def rate(self) -> float:
        return self.capacity / 60.0


@dataclass(slots=True, frozen=True)
class Denial:
    bucket: Bucket
    retry_after: float


class BackendUnavailableError(Exception):
    """The backend could not answer (Redis down or slow); the caller applies its policy."""


class BucketBackend(Protocol):
    name: str

    async def take(self, buckets: Sequence[Bucket]) -> Denial | None:
        """Charge every bucket, or none and say which one refused and for how long."""

    def adjust_soon(self, buckets: Sequence[Bucket]) -> None:
        """Add each bucket's `cost` (negative refunds) without checking; may run later."""

    async def settled(self) -> None:
        """Wait until every `adjust_soon` so far has been applied."""

    async def close(self) -> None: ...


def wait_for(level: float, bucket: Bucket) -> float:
    """Seconds until `bucket` at `level` can pay its cost (capped at the capacity)."""
    return max(0.0, (min(bucket.cost, bucket.capacity) - level) / bucket.rate)


class MemoryBuckets:
    """Buckets in this process only: exact and fast, but each replica counts on its own."""

    name = "memory"

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        # key -> [level, last update, refill per second, capacity]
        self._buckets: dict[str, list[float]] = {}

    def _level(self, bucket: Bucket, now: float) -> float:
        state = self._buckets.get(bucket.key)
        if state is None:
            return bucket.capacity
        return min(bucket.capacity, state[0] + (now - state[1]) * bucket.rate)

    async def take(self, buckets: Sequence[Bucket]) -> Denial | None:
        now = self._clock()
        levels = [self._level(b, now) for b in buckets]
        worst: Denial | None = None
        for bucket, level in zip(buckets, levels, strict=True):
            wait = wait_for(level, bucket)
            if wait > 0 and (worst is None or wait > worst.retry_after):
                worst = Denial(bucket, wait)
        if worst is not None:
            return worst
        for bucket, level in zip(buckets, levels, strict=True):
            self._buckets[bucket.key] = [level - bucket.cost, now, bucket.rate, bucket.capacity]
        if len(self._buckets) > MAX_BUCKETS:
            self._prune(now)
        return None

    def adjust_soon(self, buckets: Sequence[Bucket]) -> None:
        now = self._clock()
        for bucket in buckets:
            level = min(bucket.capacity, self._level(bucket, now) - bucket.cost)
            self._buckets[bucket.key] = [level, now, bucket.rate, bucket.capacity]

    def _prune(self, now: float) -> None:
        # A bucket that has refilled completely is the same as no bucket at all.
        stale = [k for k, (lv, t, r, cap) in self._buckets.items() if lv + (now - t) * r >= cap]
        for key in stale:
            del self._buckets[key]

    async def settled(self) -> None:
        return None  # applied at once

    async def close(self) -> None:
        self._buckets.clear()
