"""A request cancelled while its budget hold is being made or settled leaves no hold behind:
the budget's spend stays exact in every store, and App.stop waits for the release."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
import pytest

from llmproxy.server.config.caching import BudgetConfig
from llmproxy.server.config.providers import Price
from llmproxy.server.core.accounting.budgets import (
    Budgets,
    BudgetStore,
    MemoryBudgetStore,
    Refusal,
    Slot,
    to_nano,
)
from llmproxy.server.core.accounting.ledger import LedgerWriter
from llmproxy.server.core.accounting.postgres_budgets import PostgresBudgetStore
from llmproxy.server.core.accounting.redis_budgets import RedisBudgetStore
from llmproxy.server.core.accounting.stage import UsageAccounting
from llmproxy.server.domain import (
    CallContext,
    Completed,
    Message,
    Parameters,
    QueryInput,
    Role,
    Usage,
)
from tests.accounting.conftest import PG_DSN, PRICED, REDIS_URL, mock_models
from tests.accounting.streams import ListLedger, answer, deployment
from tests.support.running import running_client, settings_for

PRICE = Price(input_per_mtok=1000.0, output_per_mtok=2000.0)
PROMPT = (Message(Role.USER, "hello world"),)  # 9 tokens with chat framing
REAL = Usage(9, 2)
REAL_COST = (9 * 1000 + 2 * 2000) / 1e6


class SlowStore:
    """A real store whose replies are late: a reserve is made at once and answered after
    `reserve_delay_s`; a settle reaches the store only after `settle_delay_s`."""

    suspends = True

    def __init__(
        self, store: BudgetStore, *, reserve_delay_s: float = 0.0, settle_delay_s: float = 0.0
    ) -> None:
        self.store = store
        self.reserve_delay_s = reserve_delay_s
        self.settle_delay_s = settle_delay_s
        self.reserves = 0
        self.reserved = asyncio.Event()  # a hold is in the store, its reply not yet back

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        refusal = await self.store.reserve(slots, rid, amount, expires_at)
        self.reserves += 1
        self.reserved.set()
        await asyncio.sleep(self.reserve_delay_s)
        return refusal

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        await asyncio.sleep(self.settle_delay_s)
        await self.store.settle(slots, rid, spent)

    async def usage(self, slot: Slot) -> tuple[int, int]:
        return await self.store.usage(slot)

    async def close(self) -> None:
        await self.store.close()


@pytest.fixture(params=["memory", "redis", "postgres"])
async def store(request, redis_prefix, pg_name):
    if request.param == "memory":
        real: BudgetStore = MemoryBudgetStore()
    elif request.param == "redis":
        real = RedisBudgetStore(REDIS_URL, redis_prefix)
    else:
        real = PostgresBudgetStore(PG_DSN, pg_name)
    yield real
    await real.close()


def stage_over(store: BudgetStore) -> tuple[UsageAccounting, Budgets, ListLedger]:
    budgets = Budgets([BudgetConfig(key_id="team-a", period="day", limit_usd=1.0)], store)
    backend = ListLedger()
    return (
        UsageAccounting(budgets=budgets, ledger=LedgerWriter(backend, flush_interval_s=60)),
        budgets,
        backend,
    )


def query(request_id: str) -> QueryInput:
    return QueryInput(
        messages=PROMPT, model="m", request_id=request_id, params=Parameters(max_tokens=5)
    )


def ctx() -> CallContext:
    return CallContext(key_id="team-a", started_at=time.perf_counter())


async def nano_held(budgets: Budgets) -> tuple[int, int]:
    """(spent, reserved) in nano-USD: exact, so a lingering hold cannot hide in rounding."""
    return await budgets.store.usage(budgets.slots("team-a")[0])


async def test_a_request_cancelled_while_its_settle_awaits_the_store_still_settles(store):
    stage, budgets, _ = stage_over(SlowStore(store, settle_delay_s=0.2))
    d = deployment("m", price=PRICE)
    completed = asyncio.Event()

    async def request() -> None:
        async for event in stage.track(query("r1"), ctx(), [d], answer("m", ["a", "b"], REAL)):
            if type(event) is Completed:
                completed.set()
                await asyncio.sleep(10)  # the caller still holds the stream open

    task = asyncio.create_task(request())
    await asyncio.wait_for(completed.wait(), 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await nano_held(budgets) != (to_nano(REAL_COST), 0)  # still on its way
    await asyncio.sleep(0.4)
    assert await nano_held(budgets) == (to_nano(REAL_COST), 0)
    assert not budgets._pending


async def test_a_request_cancelled_while_its_hold_is_being_made_releases_it(store):
    slow = SlowStore(store, reserve_delay_s=0.3)
    stage, budgets, backend = stage_over(slow)
    calls: list[str] = []
    d = deployment("m", price=PRICE)

    async def request() -> None:
        async for _ in stage.track(query("r1"), ctx(), [d], answer("m", ["a"], REAL, calls=calls)):
            pass

    task = asyncio.create_task(request())
    await asyncio.wait_for(slow.reserved.wait(), 2)
    spent, reserved = await nano_held(budgets)
    assert spent == 0 and reserved > 0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    # drain (what App.stop runs) waits for the reply, then the release.
    await stage.drain()
    assert await nano_held(budgets) == (0, 0)
    assert calls == [] and not budgets._pending
    assert stage.ledger is not None
    await stage.ledger.flush()
    assert [(r.status, r.cost_usd) for r in backend.records] == [("CANCELLED", 0.0)]
    # And the budget serves the next request as if the cancelled one had never come.
    slow.reserve_delay_s = 0
    async for _ in stage.track(query("r2"), ctx(), [d], answer("m", ["a", "b"], REAL)):
        pass
    await stage.drain()
    assert await nano_held(budgets) == (to_nano(REAL_COST), 0)


async def test_a_refused_hold_is_not_released_twice(store):
    """A reserve refused (over budget) after its caller left must release nothing."""
    slow = SlowStore(store, reserve_delay_s=0.2)
    budgets = Budgets([BudgetConfig(key_id="team-a", period="day", limit_usd=1.0)], slow)
    slot = budgets.slots("team-a")[0]
    await store.reserve([slot], "spender", to_nano(1.0), time.time() + 60)
    await store.settle([slot], "spender", to_nano(1.0))
    task = asyncio.create_task(budgets.reserve("team-a", 0.5))
    await asyncio.wait_for(slow.reserved.wait(), 2)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await budgets.drain()
    assert await store.usage(slot) == (to_nano(1.0), 0)


async def test_a_deadline_passing_while_the_hold_is_made_leaves_no_hold_in_redis(redis_prefix):
    config = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        budgets=[{"key_id": "anonymous", "period": "day", "limit_usd": 1.0}],
        budget_store={"backend": "redis", "redis_url": REDIS_URL, "prefix": redis_prefix},
    )
    async with running_client(settings_for(config)) as (app, client):
        budgets = app.accounting.budgets
        slow = budgets.store = SlowStore(budgets.store, reserve_delay_s=0.5)
        slot = budgets.slots("anonymous")[0]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hello world", model="mock-a", max_tokens=5, timeout=0.2)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert slow.reserves == 1
        async with asyncio.timeout(3):  # the server notices the deadline a moment later
            while True:
                if await slow.usage(slot) == (0, 0):
                    break
                await asyncio.sleep(0.02)
        slow.reserve_delay_s = 0
        result = await client.query("hello world", model="mock-a", max_tokens=5)
        await app.accounting.stage.drain()
        assert await slow.usage(slot) == (to_nano(result.done.cost_usd), 0)
