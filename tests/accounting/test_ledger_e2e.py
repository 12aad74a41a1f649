"""Every request through the real gateway leaves one ledger row: successes, failures,
cancellations and cache hits, in SQLite (a real file) and PostgreSQL (a real server)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from llmproxy.client.client import build_query_request
from tests.accounting.conftest import PRICED, mock_models
from tests.support.running import running_client, settings_for


def gateway_config(ledger: dict) -> dict:
    config = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        {"name": "mock-error", "upstream_model": "mock-error", "price": PRICED},
        ledger={"flush_interval_ms": 60_000, **ledger},
    )
    config["providers"].append({"name": "slow", "type": "mock", "options": {"tokens_per_s": 20}})
    config["models"].append(
        {"name": "mock-slow", "provider": "slow", "upstream_model": "mock-slow", "price": PRICED}
    )
    return config


async def rows_after_flush(app, read, want: int, timeout: float = 3.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        await app.accounting.ledger.flush()
        rows = await read()
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.02)


async def test_success_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, client):
        result = await client.query("one two three", model="mock-a", request_id="ok-1")
        [row] = await rows_after_flush(app, read, 1)
    done = result.done
    assert row["request_id"] == "ok-1" and row["key_id"] == "anonymous"
    assert (row["model"], row["provider"], row["status"]) == ("mock-a", "mock", "OK")
    assert (row["input_tokens"], row["output_tokens"]) == (
        done.metadata.input_tokens,
        done.metadata.output_tokens,
    )
    expected = (done.metadata.input_tokens * 1000 + done.metadata.output_tokens * 2000) / 1e6
    assert done.cost_usd == pytest.approx(expected) and expected > 0
    assert row["cost_usd"] == pytest.approx(expected)
    assert row["latency_ms"] >= 0 and not row["estimated"]


async def test_failure_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="mock-error", request_id="bad-1")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        [row] = await rows_after_flush(app, read, 1)
    assert (row["request_id"], row["model"], row["status"]) == (
        "bad-1",
        "mock-error",
        "UPSTREAM_UNAVAILABLE",
    )
    assert (row["cost_usd"], row["input_tokens"], row["output_tokens"]) == (0, 0, 0)


async def test_unknown_model_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="no-such-model", request_id="nf-1")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        [row] = await rows_after_flush(app, read, 1)
    assert (row["request_id"], row["model"], row["provider"], row["status"]) == (
        "nf-1",
        "no-such-model",
        "",
        "MODEL_NOT_FOUND",
    )
    assert row["cost_usd"] == 0


async def test_cancelled_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, client):
        call = client.stream(build_query_request("tell me", model="mock-slow", request_id="c-1"))
        deltas = 0
        async for event in call:
            if event.HasField("delta"):
                deltas += 1
                if deltas == 2:
                    call.cancel()
                    break
        [row] = await rows_after_flush(app, read, 1)
    assert (row["request_id"], row["status"], row["model"]) == ("c-1", "CANCELLED", "mock-slow")
    # Billed for the prompt and the words that were streamed before the caller left.
    assert row["output_tokens"] >= 2 and row["cost_usd"] > 0 and row["estimated"]


async def test_cache_hit_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, client):
        first = await client.query("same question", model="mock-a", temperature=0)
        second = await client.query("same question", model="mock-a", temperature=0)
        rows = await rows_after_flush(app, read, 2)
    assert first.done.cost_usd > 0 and second.done.cost_usd == 0
    assert [(r["status"], r["cache_status"]) for r in rows] == [("OK", "miss"), ("OK", "hit")]
    assert rows[1]["cost_usd"] == 0


async def test_parallel_query_leaves_one_row_per_model(ledger):
    config, read = ledger
    from llmproxy.v1 import llmproxy_pb2 as pb

    async with running_client(settings_for(gateway_config(config))) as (app, client):
        request = pb.ParallelQueryRequest(
            query="compare", models=["mock-a", "mock-error"], request_id="p-1"
        )
        events = [e async for e in client.parallel(request)]
        rows = await rows_after_flush(app, read, 2)
    assert events[-1].summary.total_cost_usd > 0
    assert sorted((r["request_id"], r["status"]) for r in rows) == [
        ("p-1:mock-a", "OK"),
        ("p-1:mock-error", "UPSTREAM_UNAVAILABLE"),
    ]
