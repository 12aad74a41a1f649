"""Every Query and ParallelQuery leaves exactly one ledger record, the ones refused before the
core too (auth, rate limits, invalid input): zero tokens, zero cost, the reason, the key id
when known. Real gateway, real ledger (SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.client import build_parameters
from llmproxy.server.security.api_keys import hash_key
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.accounting.conftest import PRICED, mock_models
from tests.support.running import running_client, settings_for

KEY_A = "sk-team-a-" + "a" * 40  # may use mock-a and mock-slow only
KEY_ADMIN = "sk-admin-" + "c" * 40  # every model, sees every key's usage
KEY_RL = "sk-team-rl-" + "r" * 40  # one request a minute


def gateway_config(ledger: dict) -> dict:
    config = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        {"name": "mock-b", "upstream_model": "mock-b", "price": PRICED},
        auth={
            "enabled": True,
            "api_keys": [
                {"id": "team-a", "hash": hash_key(KEY_A), "scopes": {"models": ["mock-a"]}},
                {"id": "admin", "hash": hash_key(KEY_ADMIN), "scopes": {"usage": "all"}},
                {
                    "id": "team-rl",
                    "hash": hash_key(KEY_RL),
                    "rate_limit": {"requests_per_minute": 1},
                },
            ],
        },
        ledger={"flush_interval_ms": 60_000, **ledger},
    )
    config["providers"].append({"name": "slow", "type": "mock", "options": {"tokens_per_s": 20}})
    config["models"].append(
        {"name": "mock-slow", "provider": "slow", "upstream_model": "mock-slow", "price": PRICED}
    )
    return config


async def rows_for(app, read, request_id: str) -> list[dict]:
    """The rows of one request (ParallelQuery's core rows are `<id>:<model>`), once flushed."""
    await app.accounting.ledger.flush()
    return [r for r in await read() if r["request_id"].split(":")[0] == request_id]


async def refused(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code()


def assert_refusal(rows: list[dict], request_id: str, key_id: str, model: str, status: str):
    [row] = rows
    assert (row["request_id"], row["key_id"], row["model"], row["status"]) == (
        request_id,
        key_id,
        model,
        status,
    )
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (0, 0, 0)
    assert row["provider"] == "" and row["latency_ms"] >= 0 and not row["estimated"]


async def test_unauthenticated_calls_leave_one_row_without_a_key_id(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config))) as (app, anonymous):
        target = f"127.0.0.1:{app.grpc_port}"
        code = await refused(anonymous.query("hi", model="mock-a", request_id="anon-1"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        async with AsyncLLMProxyClient(target, api_key="sk-wrong-" + "x" * 40) as wrong:
            code = await refused(wrong.query("hi", model="mock-a", request_id="wrong-1"))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            request = pb.ParallelQueryRequest(
                query="hi", models=["mock-a", "mock-b"], request_id="wrong-2"
            )
            code = await refused(_drain(wrong.parallel(request)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        anon = await rows_for(app, read, "anon-1")
        wrong_key = await rows_for(app, read, "wrong-1")
        wrong_parallel = await rows_for(app, read, "wrong-2")
    assert_refusal(anon, "anon-1", "", "mock-a", "UNAUTHENTICATED")
    assert_refusal(wrong_key, "wrong-1", "", "mock-a", "UNAUTHENTICATED")
    assert_refusal(wrong_parallel, "wrong-2", "", "mock-a,mock-b", "UNAUTHENTICATED")


async def test_a_key_without_the_model_scope_leaves_one_row_with_its_key_id(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config)), api_key=KEY_A) as (app, a):
        code = await refused(a.query("hi", model="mock-b", request_id="scope-1"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        rows = await rows_for(app, read, "scope-1")
    assert_refusal(rows, "scope-1", "team-a", "mock-b", "PERMISSION_DENIED")


async def test_a_rate_limited_call_leaves_one_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config)), api_key=KEY_RL) as (app, rl):
        await rl.query("hi", model="mock-a", request_id="rl-1", max_tokens=2)
        code = await refused(rl.query("hi", model="mock-a", request_id="rl-2"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        admitted = await rows_for(app, read, "rl-1")
        limited = await rows_for(app, read, "rl-2")
    assert [r["status"] for r in admitted] == ["OK"]
    assert_refusal(limited, "rl-2", "team-rl", "mock-a", "RATE_LIMITED")


async def test_invalid_input_leaves_one_row(ledger):
    config, read = ledger
    async with running_client(settings_for(gateway_config(config)), api_key=KEY_A) as (app, a):
        code = await refused(a.query("hi", model="mock-a", temperature=5, request_id="bad-t"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        request = pb.ParallelQueryRequest(
            query="hi",
            models=["mock-a", "mock-a"],
            parameters=build_parameters(max_tokens=2),
            request_id="bad-p",
        )
        code = await refused(_drain(a.parallel(request)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        query = await rows_for(app, read, "bad-t")
        parallel = await rows_for(app, read, "bad-p")
    assert_refusal(query, "bad-t", "team-a", "mock-a", "INVALID_REQUEST")
    assert_refusal(parallel, "bad-p", "team-a", "mock-a,mock-a", "INVALID_REQUEST")


async def test_calls_the_core_recorded_get_no_second_row(ledger):
    """Routing refusals, successes and calls cut off inside the core keep the core's own
    rows only (ParallelQuery's are written from its per-model tasks)."""
    config, read = ledger
    settings = settings_for(gateway_config(config))
    async with running_client(settings, api_key=KEY_ADMIN) as (app, admin):
        code = await refused(admin.query("hi", model="no-such-model", request_id="nf-1"))
        assert code == grpc.StatusCode.NOT_FOUND
        await admin.query("one two", model="mock-a", request_id="ok-1", max_tokens=3)
        code = await refused(admin.query("hi", model="mock-slow", request_id="late-1", timeout=0.2))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        request = pb.ParallelQueryRequest(
            query="hi", models=["mock-a", "mock-slow"], request_id="late-2"
        )
        code = await refused(_drain(admin.parallel(request, timeout=0.3)))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        ok = await rows_for(app, read, "ok-1")
        late = await _settled_rows(app, read, "late-1", 1)
        late_parallel = await _settled_rows(app, read, "late-2", 2)
        not_found = await rows_for(app, read, "nf-1")
    assert [(r["request_id"], r["status"]) for r in not_found] == [("nf-1", "MODEL_NOT_FOUND")]
    assert [(r["status"], r["key_id"]) for r in ok] == [("OK", "admin")]
    assert ok[0]["input_tokens"] > 0 and ok[0]["cost_usd"] > 0
    assert [r["request_id"] for r in late] == ["late-1"]
    assert late[0]["status"] in ("DEADLINE_EXCEEDED", "CANCELLED")
    assert sorted(r["request_id"] for r in late_parallel) == ["late-2:mock-a", "late-2:mock-slow"]


async def test_get_usage_shows_each_keys_refusals(ledger):
    config, _ = ledger
    settings = settings_for(gateway_config(config))
    async with running_client(settings, api_key=KEY_A) as (app, a):
        target = f"127.0.0.1:{app.grpc_port}"
        await a.query("hello", model="mock-a", max_tokens=2)
        await refused(a.query("hello", model="mock-b"))  # scope
        await refused(a.query("hello", model="mock-a", temperature=5))  # invalid
        async with (
            AsyncLLMProxyClient(target, api_key=KEY_RL) as rl,
            AsyncLLMProxyClient(target) as anonymous,
            AsyncLLMProxyClient(target, api_key=KEY_ADMIN) as admin,
        ):
            await rl.query("hello", model="mock-a", max_tokens=2)
            await refused(rl.query("hello", model="mock-a"))  # rate limit
            await refused(anonymous.query("hello", model="mock-a"))
            own = await a.usage()
            everyone = await admin.usage()
    assert {(r.key_id, r.model): (r.requests, r.errors) for r in own.rows} == {
        ("team-a", "mock-a"): (2, 1),
        ("team-a", "mock-b"): (1, 1),
    }
    by_key = {(r.key_id, r.model): (r.requests, r.errors, r.cost_usd) for r in everyone.rows}
    assert by_key[("team-rl", "mock-a")][:2] == (2, 1)
    assert by_key[("", "mock-a")] == (1, 1, 0)


async def _drain(stream) -> list:
    return [item async for item in stream]


async def _settled_rows(app, read, request_id: str, want: int, timeout: float = 3.0) -> list:
    """Rows of a call cut off by its deadline: the server side may end just after the client."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await rows_for(app, read, request_id)
        if len(rows) >= want or time.monotonic() > deadline:
            await asyncio.sleep(0.1)  # and nothing more arrives
            return await rows_for(app, read, request_id)
        await asyncio.sleep(0.02)
