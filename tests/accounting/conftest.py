"""Fixtures for the accounting tests: mock configs, unique PostgreSQL tables and Redis keys."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as redis

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def mock_models(*models: dict[str, Any], ttft_ms: float = 0, **extra: Any) -> dict[str, Any]:
    """A config with the built-in mock provider and the given model entries."""
    return {
        "providers": [{"name": "mock", "type": "mock", "options": {"ttft_ms": ttft_ms}}],
        "models": [{"provider": "mock", **m} for m in models],
        **extra,
    }


PRICED = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}


@pytest.fixture
async def pg_name():
    """A table name (or prefix) of this test's own; its tables are dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(PG_DSN)
    try:
        for table in (name, f"{name}_budget_spend", f"{name}_budget_holds"):
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(f"DROP FUNCTION IF EXISTS {name}_budget_reserve, {name}_budget_settle")
    finally:
        await conn.close()


@pytest.fixture
async def redis_prefix():
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"t_{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=f"{prefix}:*", count=500):
            await client.delete(key)
    finally:
        await client.aclose()


COLUMNS = (
    "request_id, key_id, model, provider, status, cache_status, input_tokens, "
    "output_tokens, cost_usd, latency_ms, estimated"
)


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger(request, tmp_path, pg_name):
    """(ledger config, async function returning the table's rows as dicts)."""
    if request.param == "sqlite":
        path = tmp_path / "usage.db"

        async def read() -> list[dict]:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.row_factory = sqlite3.Row
                return [dict(r) for r in db.execute(f"SELECT {COLUMNS} FROM llmproxy_usage")]

        return {"backend": "sqlite", "path": str(path)}, read

    async def read_pg() -> list[dict]:
        conn = await asyncpg.connect(PG_DSN)
        try:
            return [
                dict(r) for r in await conn.fetch(f"SELECT {COLUMNS} FROM {pg_name} ORDER BY id")
            ]
        finally:
            await conn.close()

    return {"backend": "postgres", "dsn": PG_DSN, "table": pg_name}, read_pg
