"""Token-bucket semantics, the same in process and in Redis's Lua script."""

from __future__ import annotations

import pytest

from llmproxy.server.security.buckets import Bucket, MemoryBuckets
from llmproxy.server.security.redis_buckets import RedisBuckets
from tests.interceptors.conftest import REDIS_URL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bucket(prefix: str, name: str, capacity: float, cost: float) -> Bucket:
    return Bucket(f"{prefix}{{k}}:{name}", capacity, cost, "tokens", "key", "key:k")


@pytest.fixture(params=["memory", "redis"])
async def backend(request, redis_prefix):
    if request.param == "memory":
        yield MemoryBuckets(Clock())
    else:
        redis = RedisBuckets(REDIS_URL, timeout_s=1)
        yield redis
        await redis.close()


async def test_all_or_nothing_with_debt_and_oversized_costs(backend, redis_prefix):
    # 6 per minute refills 0.1/s: over the few milliseconds of this test, next to nothing.
    a = bucket(redis_prefix, "a", 6, 4)
    b = bucket(redis_prefix, "b", 6, 1)
    assert await backend.take([a, b]) is None  # a: 2 left, b: 5 left
    denial = await backend.take([a, b])
    assert denial is not None and denial.bucket.key == a.key
    assert denial.retry_after == pytest.approx(20, abs=0.1)  # 2 missing at 0.1/s
    # The refused request charged nothing: b still has 5.
    assert await backend.take([bucket(redis_prefix, "b", 6, 5)]) is None
    # Larger than the capacity: allowed from a full bucket, which goes into debt...
    big = bucket(redis_prefix, "c", 6, 10)
    assert await backend.take([big]) is None
    # ...so the next charge waits for the debt too: (1 - (6 - 10)) / 0.1 = 50 s.
    denial = await backend.take([bucket(redis_prefix, "c", 6, 1)])
    assert denial is not None and denial.retry_after == pytest.approx(50, abs=0.1)


async def test_adjust_settles_a_charge_both_ways(backend, redis_prefix):
    charge = bucket(redis_prefix, "t", 60, 50)
    assert await backend.take([charge]) is None  # 10 left
    backend.adjust_soon([bucket(redis_prefix, "t", 60, -45)])  # used 5, not 50: refund 45
    await backend.settled()  # Redis settles in the background
    assert await backend.take([bucket(redis_prefix, "t", 60, 55)]) is None  # 55 were there
    backend.adjust_soon([bucket(redis_prefix, "t", 60, 100)])  # used 100 more than charged
    await backend.settled()
    denial = await backend.take([bucket(redis_prefix, "t", 60, 1)])
    assert denial is not None and denial.retry_after == pytest.approx(101, abs=0.5)


async def test_memory_refills_with_time_and_forgets_full_buckets():
    clock = Clock()
    memory = MemoryBuckets(clock)
    b = bucket("", "r", 60, 60)
    assert await memory.take([b]) is None
    assert await memory.take([bucket("", "r", 60, 1)]) is not None
    clock.now += 1.0  # 1 per second
    assert await memory.take([bucket("", "r", 60, 1)]) is None
    clock.now += 120
    memory._prune(clock.now)
    assert memory._buckets == {}
