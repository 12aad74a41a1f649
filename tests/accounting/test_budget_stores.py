"""Budget stores (memory, Redis, PostgreSQL) keep one contract: atomic reserve against every
slot of a key, settle, and holds left by a dead replica lapse."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmproxy.server.config.caching import BudgetConfig
from llmproxy.server.core.accounting.budgets import MemoryBudgetStore, Slot, period_slot
from llmproxy.server.core.accounting.postgres_budgets import PostgresBudgetStore
from llmproxy.server.core.accounting.redis_budgets import RedisBudgetStore
from tests.accounting.conftest import PG_DSN, REDIS_URL


@pytest.fixture(params=["memory", "redis", "postgres"])
async def store(request, redis_prefix, pg_name):
    if request.param == "memory":
        s = MemoryBudgetStore()
    elif request.param == "redis":
        s = RedisBudgetStore(REDIS_URL, redis_prefix)
    else:
        s = PostgresBudgetStore(PG_DSN, pg_name)
    yield s
    await s.close()


def slot(period: str = "day", limit: int = 100, key_id: str = "team-a") -> Slot:
    return Slot(key_id, period, "2030-01-01", limit, time.time() + 3600)


LATER = time.time() + 600


async def test_reserve_until_the_limit_then_refuse(store):
    s = slot(limit=100)
    assert await store.reserve([s], "a", 60, LATER) is None
    assert await store.reserve([s], "b", 60, LATER) is None  # 60 < 100: admitted
    refusal = await store.reserve([s], "c", 1, LATER)  # 120 >= 100
    assert refusal is not None
    assert (refusal.slot, refusal.spent, refusal.reserved) == (s, 0, 120)
    assert await store.usage(s) == (0, 120)


async def test_settle_replaces_the_hold_with_the_real_cost(store):
    s = slot()
    await store.reserve([s], "a", 60, LATER)
    await store.settle([s], "a", 25)
    assert await store.usage(s) == (25, 0)
    await store.settle([s], "a", 0)  # settling twice adds nothing
    assert await store.usage(s) == (25, 0)


async def test_a_full_slot_refuses_without_reserving_in_the_others(store):
    day, month = slot("day", limit=1000), slot("month", limit=50)
    await store.reserve([month], "x", 50, LATER)
    refusal = await store.reserve([day, month], "y", 10, LATER)
    assert refusal is not None and refusal.slot == month
    assert await store.usage(day) == (0, 0)


async def test_keys_do_not_share_slots(store):
    a, b = slot(key_id="a", limit=10), slot(key_id="b", limit=10)
    await store.reserve([a], "1", 10, LATER)
    assert await store.reserve([b], "2", 5, LATER) is None


@pytest.mark.parametrize("store", ["redis", "postgres"], indirect=True)
async def test_a_hold_whose_replica_died_lapses(store):
    s = slot(limit=100)
    await store.reserve([s], "dead-replica", 100, time.time() + 0.2)
    assert await store.reserve([s], "b", 1, LATER) is not None
    await asyncio.sleep(0.3)
    assert await store.reserve([s], "c", 1, LATER) is None
    assert await store.usage(s) == (0, 1)


@pytest.mark.parametrize("store", ["redis", "postgres"], indirect=True)
async def test_concurrent_reserves_are_atomic(store):
    s = slot(limit=1000)
    results = await asyncio.gather(*(store.reserve([s], f"r{i}", 100, LATER) for i in range(40)))
    # Admitted while spent + held < limit: exactly ten holds of 100 fit under 1000.
    assert sum(r is None for r in results) == 10
    assert await store.usage(s) == (0, 1000)


@pytest.mark.parametrize(
    ("period", "now", "start", "resets"),
    [
        ("day", "2024-02-28T23:59:59", "2024-02-28", "2024-02-29T00:00:00"),
        ("day", "2024-12-31T10:00:00", "2024-12-31", "2025-01-01T00:00:00"),
        ("month", "2024-02-15T12:00:00", "2024-02-01", "2024-03-01T00:00:00"),
        ("month", "2024-12-31T23:00:00", "2024-12-01", "2025-01-01T00:00:00"),
    ],
)
def test_periods_are_utc_days_and_months(period, now, start, resets):
    from datetime import UTC, datetime

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()

    s = period_slot(BudgetConfig(key_id="k", period=period, limit_usd=1.5), ts(now))
    assert (s.start, s.resets_at, s.limit) == (start, ts(resets), 1_500_000_000)
    assert s.name == f"k:{period}:{start}"
