"""Budgets and the ledger follow the caller's API key id, set by the auth interceptor."""

from __future__ import annotations

import grpc
import pytest

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.security.api_keys import hash_key
from tests.accounting.conftest import PRICED, mock_models
from tests.support.running import running_app, settings_for

KEY_A = "sk-team-a-" + "a" * 40
KEY_B = "sk-team-b-" + "b" * 40


async def test_each_key_has_its_own_budget_and_ledger_rows(tmp_path):
    config = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        auth={
            "enabled": True,
            "api_keys": [
                {"id": "team-a", "hash": hash_key(KEY_A)},
                {"id": "team-b", "hash": hash_key(KEY_B), "scopes": {"usage": "all"}},
            ],
        },
        budgets=[{"key_id": "team-a", "period": "month", "limit_usd": 0.02}],
        ledger={"backend": "sqlite", "path": str(tmp_path / "usage.db")},
    )
    async with running_app(settings_for(config)) as app:
        target = f"127.0.0.1:{app.grpc_port}"
        async with (
            AsyncLLMProxyClient(target, api_key=KEY_A) as a,
            AsyncLLMProxyClient(target, api_key=KEY_B) as b,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                for _ in range(10):
                    await a.query("hello world", model="mock-a", max_tokens=5)
                    await app.accounting.stage.drain()
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "monthly budget of $0.02 for key 'team-a'" in caught.value.details()
            for _ in range(3):  # team-b has no budget
                await b.query("hello world", model="mock-a", max_tokens=5)
            usage = await b.usage()
    by_key = {r.key_id: r for r in usage.rows}
    assert set(by_key) == {"team-a", "team-b"}
    assert by_key["team-b"].requests == 3 and by_key["team-b"].errors == 0
    assert by_key["team-a"].errors == 1  # the refused request has its row too
    assert by_key["team-a"].cost_usd <= 0.02 + (9 * 1000 + 5 * 2000) / 1e6


async def test_a_key_reads_only_its_own_usage_unless_scoped_for_all(tmp_path):
    config = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        auth={
            "enabled": True,
            "api_keys": [
                {"id": "team-a", "hash": hash_key(KEY_A)},
                {"id": "team-b", "hash": hash_key(KEY_B), "scopes": {"usage": "all"}},
            ],
        },
        ledger={"backend": "sqlite", "path": str(tmp_path / "usage.db")},
    )
    async with running_app(settings_for(config)) as app:
        target = f"127.0.0.1:{app.grpc_port}"
        async with (
            AsyncLLMProxyClient(target, api_key=KEY_A) as a,
            AsyncLLMProxyClient(target, api_key=KEY_B) as b,
        ):
            await a.query("hello", model="mock-a", max_tokens=2)
            await b.query("hello", model="mock-a", max_tokens=2)
            await app.accounting.ledger.flush()
            own = await a.usage()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await a.usage(key_id="team-b")
            everyone = await b.usage()
    assert {r.key_id for r in own.rows} == {"team-a"}
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert {r.key_id for r in everyone.rows} == {"team-a", "team-b"}
