"""The accounting stage driven directly: cost on Completed, one record per request however it
ends, reservations settled or released, context-window filtering."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from llmproxy.server.config.caching import BudgetConfig
from llmproxy.server.config.providers import Price
from llmproxy.server.core import tokens
from llmproxy.server.core.accounting.budgets import Budgets, MemoryBudgetStore
from llmproxy.server.core.accounting.ledger import LedgerWriter
from llmproxy.server.core.accounting.stage import UsageAccounting
from llmproxy.server.domain import (
    CacheMode,
    CacheOptions,
    CacheStatus,
    CallContext,
    Completed,
    Message,
    Parameters,
    QueryInput,
    Role,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import BudgetExceededError, ContextTooLongError
from tests.accounting.streams import ListLedger, answer, broken, deployment

PRICE = Price(input_per_mtok=1000.0, output_per_mtok=2000.0)
PROMPT = (Message(Role.USER, "hello world"),)  # 9 tokens with chat framing
PROMPT_TOKENS = 9
MAX_TOKENS = 5
ESTIMATE = (PROMPT_TOKENS * 1000 + MAX_TOKENS * 2000) / 1e6  # 0.019
REAL = Usage(PROMPT_TOKENS, 2)
REAL_COST = (PROMPT_TOKENS * 1000 + 2 * 2000) / 1e6  # 0.013


def query(request_id: str = "r1", **kwargs) -> QueryInput:
    kwargs.setdefault("params", Parameters(max_tokens=MAX_TOKENS))
    return QueryInput(messages=PROMPT, model="m", request_id=request_id, **kwargs)


def ctx(key_id: str = "team-a", **kwargs) -> CallContext:
    return CallContext(key_id=key_id, started_at=time.perf_counter(), **kwargs)


@pytest.fixture
def backend() -> ListLedger:
    return ListLedger()


@pytest.fixture
def budgets() -> Budgets:
    return Budgets(
        [BudgetConfig(key_id="team-a", period="day", limit_usd=0.1)], MemoryBudgetStore()
    )


@pytest.fixture
def stage(backend, budgets) -> UsageAccounting:
    return UsageAccounting(budgets=budgets, ledger=LedgerWriter(backend, flush_interval_s=60))


async def records(stage: UsageAccounting, backend: ListLedger):
    await stage.drain()
    assert stage.ledger is not None
    await stage.ledger.flush()
    return backend.records


async def held(budgets: Budgets, key_id: str = "team-a") -> tuple[float, float]:
    spent, reserved = await budgets.store.usage(budgets.slots(key_id)[0])
    return spent / 1e9, reserved / 1e9


async def test_success_is_priced_recorded_and_settled(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    events = []
    async for event in stage.track(query(), ctx(), [d], answer("m", ["Hi", " there"], REAL)):
        if not events:  # the reservation is held while the answer streams
            assert await held(budgets) == (0.0, pytest.approx(ESTIMATE))
        events.append(event)
    done = events[-1]
    assert isinstance(done, Completed)
    assert done.cost_usd == pytest.approx(REAL_COST)
    [record] = await records(stage, backend)
    assert (record.request_id, record.key_id, record.model, record.provider) == (
        "r1",
        "team-a",
        "m",
        "p",
    )
    assert (record.status, record.cache_status) == ("OK", "miss")
    assert (record.input_tokens, record.output_tokens) == (PROMPT_TOKENS, 2)
    assert record.cost_usd == pytest.approx(REAL_COST)
    assert record.latency_ms == 5 and not record.estimated
    assert abs(record.ts - time.time()) < 5
    assert await held(budgets) == (pytest.approx(REAL_COST), 0.0)


async def test_cache_hit_costs_nothing_and_is_recorded_as_a_hit(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    stream = answer("m", ["Hi"], Usage(PROMPT_TOKENS, 1, from_cache=True), cache=CacheStatus.HIT)
    events = [e async for e in stage.track(query(), ctx(), [d], stream)]
    assert events[-1].cost_usd == 0.0
    [record] = await records(stage, backend)
    assert (record.status, record.cache_status, record.cost_usd) == ("OK", "hit", 0.0)
    assert await held(budgets) == (0.0, 0.0)


async def test_failure_before_any_token_is_recorded_and_releases_the_hold(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    with pytest.raises(Exception) as caught:
        async for _ in stage.track(query(), ctx(), [d], broken("m", [])):
            pass
    assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
    [record] = await records(stage, backend)
    assert (record.status, record.model, record.cost_usd, record.input_tokens) == (
        "UPSTREAM_UNAVAILABLE",
        "m",
        0.0,
        0,
    )
    assert await held(budgets) == (0.0, 0.0)


async def test_a_stream_cut_mid_way_is_billed_for_what_was_streamed(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    seen = []
    with pytest.raises(Exception):  # noqa: B017 - the upstream's error, whatever its class
        async for event in stage.track(query(), ctx(), [d], broken("m", ["one", " two", " 3"])):
            seen.append(event)
    [record] = await records(stage, backend)
    output = tokens.count_text("m", "one two 3")
    expected = (PROMPT_TOKENS * 1000 + output * 2000) / 1e6
    assert record.status == "UPSTREAM_UNAVAILABLE"
    assert (record.input_tokens, record.output_tokens, record.estimated) == (
        PROMPT_TOKENS,
        output,
        True,
    )
    assert record.cost_usd == pytest.approx(expected)
    assert await held(budgets) == (pytest.approx(expected), 0.0)


async def test_caller_leaving_mid_stream_still_leaves_a_record(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    stream = stage.track(query(), ctx(), [d], answer("m", ["a", " b", " c", " d"], REAL))
    got = [await anext(stream) for _ in range(3)]  # Started, "a", " b"
    assert len(got) == 3
    await stream.aclose()
    [record] = await records(stage, backend)
    assert record.status == "CANCELLED"
    assert record.output_tokens == tokens.count_text("m", "a b")
    assert record.cost_usd > 0
    assert (await held(budgets))[1] == 0.0


async def test_cancelled_task_and_passed_deadline_are_told_apart(stage, backend):
    d = deployment("m", price=PRICE)

    async def consume(c: CallContext) -> None:
        async for _ in stage.track(query(), c, [d], answer("m", ["x"], REAL, delay_s=5)):
            pass

    for c, status in ((ctx(), "CANCELLED"), (ctx(deadline_s=0.05), "DEADLINE_EXCEEDED")):
        task = asyncio.create_task(consume(c))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = (await records(stage, backend))[-1]
        assert (record.status, record.cost_usd, record.output_tokens) == (status, 0.0, 0)


async def test_failed_request_records_the_callers_cache_mode(stage, backend):
    d = deployment("m", price=PRICE)
    q = query(cache=CacheOptions(mode=CacheMode.BYPASS))
    with pytest.raises(Exception):  # noqa: B017
        async for _ in stage.track(q, ctx(), [d], broken("m", [])):
            pass
    assert (await records(stage, backend))[0].cache_status == "bypass"


async def test_candidates_that_cannot_hold_the_request_are_dropped(stage, backend):
    small = deployment("small", price=PRICE, context_window=PROMPT_TOKENS + MAX_TOKENS - 1)
    exact = deployment("exact", price=PRICE, context_window=PROMPT_TOKENS + MAX_TOKENS)
    unknown = deployment("unknown", price=PRICE)
    candidates = [small, exact, unknown]
    events = stage.track(query(), ctx("nobody"), candidates, answer("exact", ["ok"], REAL))
    assert [type(e).__name__ async for e in events][-1] == "Completed"
    assert [d.name for d in candidates] == ["exact", "unknown"]  # the executor's own list


async def test_no_candidate_fits_rejects_before_the_upstream_with_the_numbers(stage, backend):
    calls: list[str] = []
    small = deployment("small", price=PRICE, context_window=10)
    smaller = deployment("smaller", price=PRICE, context_window=8)
    q = query(params=Parameters(max_tokens=100))
    with pytest.raises(ContextTooLongError) as caught:
        async for _ in stage.track(
            q, ctx(), [small, smaller], answer("small", [], REAL, calls=calls)
        ):
            pass
    error = caught.value
    assert calls == []
    assert error.metadata == {
        "prompt_tokens": str(PROMPT_TOKENS),
        "max_tokens": "100",
        "context_window": "10",
        "model": "small",
    }
    assert "9 tokens" in error.message and "max_tokens 100" in error.message
    assert "small (10)" in error.message and "smaller (8)" in error.message
    assert error.violations[0].field == "messages"
    [record] = await records(stage, backend)
    assert (record.status, record.model) == ("CONTEXT_TOO_LONG", "small")


async def test_over_budget_is_refused_naming_the_budget_until_it_resets(stage, backend, budgets):
    d = deployment("m", price=PRICE)
    served = 0
    with pytest.raises(BudgetExceededError) as caught:
        for i in range(20):
            async for _ in stage.track(query(f"r{i}"), ctx(), [d], answer("m", ["a"], REAL)):
                pass
            served += 1
            await stage.drain()
    # Admitted while spend < limit: 0.013 each against 0.1.
    assert served == 8
    error = caught.value
    [violation] = error.violations
    assert violation.subject == "budget:team-a:day"
    assert "daily budget of $0.10 for key 'team-a'" in violation.description
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    assert error.retry_after == pytest.approx(midnight.timestamp() - time.time(), abs=5)
    assert (await records(stage, backend))[-1].status == "BUDGET_EXCEEDED"
    # Another key, and a key without a budget, are unaffected.
    async for _ in stage.track(query(), ctx("someone-else"), [d], answer("m", ["a"], REAL)):
        pass


async def test_a_concurrent_burst_cannot_overshoot_by_more_than_one_request(stage, budgets):
    d = deployment("m", price=PRICE)
    outcomes: list[str] = []

    async def one(i: int) -> None:
        try:
            stream = answer("m", ["a", " b"], REAL, delay_s=0.05)
            async for _ in stage.track(query(f"b{i}"), ctx(), [d], stream):
                pass
            outcomes.append("ok")
        except BudgetExceededError:
            outcomes.append("refused")

    await asyncio.gather(*(one(i) for i in range(40)))
    await stage.drain()
    spent, reserved = await held(budgets)
    assert reserved == 0.0
    assert outcomes.count("refused") > 0
    # Without reservations all 40 would have passed the check (0.52 spent against 0.1).
    assert spent <= 0.1 + ESTIMATE
    assert spent == pytest.approx(outcomes.count("ok") * REAL_COST)


async def test_a_stream_that_ends_without_completed_is_recorded_and_released(
    stage, backend, budgets
):
    async def truncated():
        yield Started("m", "p")
        yield TextDelta("half")

    d = deployment("m", price=PRICE)
    events = [e async for e in stage.track(query(), ctx(), [d], truncated())]
    assert len(events) == 2
    [record] = await records(stage, backend)
    assert record.status == "INCOMPLETE" and record.output_tokens == 1
    assert (await held(budgets))[1] == 0.0
