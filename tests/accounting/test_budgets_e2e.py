"""Budgets through the real gateway: RESOURCE_EXHAUSTED naming the budget, and a concurrent
burst spread over two gateway instances sharing Redis or PostgreSQL that cannot overshoot
the cap by more than one request's worth."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.accounting.conftest import PG_DSN, PRICED, REDIS_URL, mock_models
from tests.support.running import running_client, settings_for

LIMIT = 0.1
# Prompt "hello world" (9 tokens, o200k estimate) + max_tokens 5, at PRICED.
ESTIMATE = (9 * 1000 + 5 * 2000) / 1e6


def budget_config(store: dict) -> dict:
    return mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        ttft_ms=60,  # requests overlap: every one is in flight when the burst's last arrives
        budgets=[{"key_id": "anonymous", "period": "day", "limit_usd": LIMIT}],
        budget_store=store,
    )


def quota_details(error: grpc.aio.AioRpcError) -> tuple[list, float | None]:
    violations, retry = [], None
    for any_ in rpc_status.from_call(error).details:
        if any_.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            any_.Unpack(failure)
            violations = list(failure.violations)
        if any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            any_.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    return violations, retry


async def burst(clients, n: int) -> tuple[list[float], list[grpc.aio.AioRpcError]]:
    costs: list[float] = []
    refused: list[grpc.aio.AioRpcError] = []

    async def one(i: int) -> None:
        try:
            result = await clients[i % len(clients)].query(
                "hello world", model="mock-a", max_tokens=5, request_id=f"b{i}"
            )
            costs.append(result.done.cost_usd)
        except grpc.aio.AioRpcError as error:
            refused.append(error)

    await asyncio.gather(*(one(i) for i in range(n)))
    return costs, refused


@pytest.fixture(params=["redis", "postgres"])
def shared_store(request, redis_prefix, pg_name) -> dict:
    if request.param == "redis":
        return {"backend": "redis", "redis_url": REDIS_URL, "prefix": redis_prefix}
    return {"backend": "postgres", "dsn": PG_DSN, "prefix": pg_name}


async def test_two_instances_share_one_budget_under_a_concurrent_burst(shared_store):
    settings = settings_for(budget_config(shared_store))
    async with contextlib.AsyncExitStack() as stack:
        app1, one = await stack.enter_async_context(running_client(settings))
        app2, two = await stack.enter_async_context(running_client(settings))
        costs, refused = await burst([one, two], 30)
        assert refused and costs
        # Each instance alone would admit as many; together they stay under one cap.
        assert sum(costs) <= LIMIT + ESTIMATE
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # After the burst settles, what is left is spent one request at a time, on either
        # instance, until both refuse: the total still stays within one request of the cap.
        for i in range(20):
            for app in (app1, app2):
                await app.accounting.stage.drain()
            more, _ = await burst([(one, two)[i % 2]], 1)
            if not more:
                break
            costs += more
        assert sum(costs) <= LIMIT + ESTIMATE
        for client in (one, two):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.query("hello world", model="mock-a", max_tokens=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_memory_budget_refuses_with_quota_failure_and_retry_info():
    settings = settings_for(budget_config({"backend": "memory"}))
    async with running_client(settings) as (_, client):
        costs, refused = await burst([client], 30)
        assert sum(costs) <= LIMIT + ESTIMATE and refused
        error = refused[0]
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        violations, retry = quota_details(error)
        assert [v.subject for v in violations] == ["budget:anonymous:day"]
        assert "daily budget of $0.10" in violations[0].description
        assert retry is not None and 0 < retry <= 86_400


async def test_budget_store_down_fails_closed_by_default_and_open_when_asked():
    down = {"backend": "redis", "redis_url": "redis://127.0.0.1:1/0"}
    async with running_client(settings_for(budget_config(down))) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hello world", model="mock-a", max_tokens=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "budget store" in caught.value.details()
    open_ = {**down, "on_failure": "open"}
    async with running_client(settings_for(budget_config(open_))) as (_, client):
        result = await client.query("hello world", model="mock-a", max_tokens=5)
        assert result.done.cost_usd > 0
