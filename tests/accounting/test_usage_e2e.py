"""Nothing is lost across a graceful restart, and GetUsage / `llmproxy usage` aggregate the
ledger by day, key and model through the real gRPC server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.cli import main as cli_main
from llmproxy.server.app import build_app
from llmproxy.server.core.accounting.ledger import LedgerWriter
from llmproxy.server.core.accounting.postgres_ledger import PostgresLedger
from llmproxy.server.core.accounting.records import UsageRecord
from llmproxy.server.core.accounting.sqlite_ledger import SqliteLedger
from tests.accounting.conftest import PG_DSN, PRICED, mock_models
from tests.support.running import running_client, settings_for


def config(ledger: dict, tokens_per_s: float = 0) -> dict:
    c = mock_models(
        {"name": "mock-a", "upstream_model": "mock-a", "price": PRICED},
        {"name": "mock-b", "upstream_model": "mock-b", "price": PRICED},
        ledger={"flush_interval_ms": 600_000, **ledger},  # only App.stop flushes
    )
    c["providers"][0]["options"]["tokens_per_s"] = tokens_per_s
    return c


async def test_graceful_stop_writes_every_record_even_of_requests_in_flight(ledger):
    ledger_config, read = ledger
    settings = settings_for(config(ledger_config, tokens_per_s=60))
    app = build_app(settings)
    await app.start()
    client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
    try:
        done = [await client.query(f"q{i}", model="mock-a", max_tokens=2) for i in range(10)]
        # Five more still streaming (~0.4 s each) when the stop begins; the drain lets them end.
        in_flight = [
            asyncio.create_task(client.query(f"late{i}", model="mock-b", request_id=f"late{i}"))
            for i in range(5)
        ]
        await asyncio.sleep(0.1)
        assert await read() == []  # nothing flushed yet: the interval is ten minutes
        await app.stop(grace=3)
        late = await asyncio.gather(*in_flight)
    finally:
        await client.close()
    rows = await read()
    assert len(done) == 10 and all(r.done.cost_usd > 0 for r in late)
    assert len(rows) == 15 and all(r["status"] == "OK" for r in rows)
    assert sorted(r["request_id"] for r in rows if r["model"] == "mock-b") == [
        f"late{i}" for i in range(5)
    ]
    # A restarted gateway on the same ledger reads them back.
    async with running_client(settings) as (_, client):
        usage = await client.usage()
    assert usage.total_requests == 15
    assert usage.total_cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows))


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def rec(when: str, key: str, model: str, tin: int, tout: int, cost: float, **kw) -> UsageRecord:
    return UsageRecord(
        ts(when),
        kw.get("rid", "r"),
        key,
        model,
        "mock",
        kw.get("status", "OK"),
        kw.get("cache", "miss"),
        tin,
        tout,
        0,
        cost,
        10.0,
    )


SEED = [
    rec("2024-05-01T10:00:00", "team-a", "mock-a", 10, 5, 0.01),
    rec("2024-05-01T23:59:59", "team-a", "mock-a", 20, 10, 0.02),
    rec("2024-05-01T11:00:00", "team-a", "mock-a", 0, 0, 0.0, status="UPSTREAM_UNAVAILABLE"),
    rec("2024-05-01T12:00:00", "team-a", "mock-a", 10, 5, 0.0, cache="hit"),
    rec("2024-05-02T00:00:00", "team-a", "mock-b", 100, 50, 0.5),
    rec("2024-05-02T09:00:00", "team-b", "mock-a", 30, 15, 0.1),
]
ROWS = [
    ("2024-05-01", "team-a", "mock-a", 4, 1, 1, 40, 20, 0.03),
    ("2024-05-02", "team-a", "mock-b", 1, 0, 0, 100, 50, 0.5),
    ("2024-05-02", "team-b", "mock-a", 1, 0, 0, 30, 15, 0.1),
]


@pytest.fixture
async def seeded(ledger, tmp_path, pg_name):
    ledger_config, _ = ledger
    if ledger_config["backend"] == "sqlite":
        backend = SqliteLedger(ledger_config["path"])
    else:
        backend = PostgresLedger(PG_DSN, pg_name)
    writer = LedgerWriter(backend, flush_interval_s=60)
    await writer.start()
    for r in SEED:
        writer.enqueue(r)
    await writer.stop()
    async with running_client(settings_for(config(ledger_config))) as (app, client):
        yield app, client


def as_tuples(response) -> list[tuple]:
    return [
        (
            r.day,
            r.key_id,
            r.model,
            r.requests,
            r.errors,
            r.cache_hits,
            r.input_tokens,
            r.output_tokens,
            pytest.approx(r.cost_usd),
        )
        for r in response.rows
    ]


async def test_get_usage_aggregates_by_day_key_and_model(seeded):
    _, client = seeded
    response = await client.usage()
    assert as_tuples(response) == ROWS
    assert (response.total_requests, response.total_input_tokens) == (6, 170)
    assert response.total_output_tokens == 85
    assert response.total_cost_usd == pytest.approx(0.63)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"key_id": "team-a"}, ROWS[:2]),
        ({"model": "mock-a"}, [ROWS[0], ROWS[2]]),
        ({"key_id": "team-b", "model": "mock-b"}, []),
        ({"start": datetime(2024, 5, 2, tzinfo=UTC)}, ROWS[1:]),
        ({"end": datetime(2024, 5, 2, tzinfo=UTC)}, ROWS[:1]),
        (
            {"start": datetime(2024, 5, 1, 11, tzinfo=UTC), "end": datetime(2024, 5, 1, 13)},
            [("2024-05-01", "team-a", "mock-a", 2, 1, 1, 10, 5, 0.0)],
        ),
    ],
)
async def test_get_usage_filters(seeded, kwargs, expected):
    _, client = seeded
    assert as_tuples(await client.usage(**kwargs)) == expected


async def test_get_usage_rejects_an_empty_range(seeded):
    _, client = seeded
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.usage(start=datetime(2024, 5, 2), end=datetime(2024, 5, 1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_get_usage_without_a_ledger_is_unimplemented():
    async with running_client(settings_for(config({"backend": "none"}))) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.usage()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ledger" in caught.value.details()


async def test_cli_usage_prints_the_aggregates(seeded, capsys):
    app, _ = seeded
    target = f"127.0.0.1:{app.grpc_port}"
    argv = ["usage", "--target", target, "--since", "2024-05-01", "--until", "2024-05-03"]
    assert await asyncio.to_thread(cli_main, [*argv, "--key", "team-a"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "DAY", "KEY", "MODEL", "REQUESTS", "ERRORS", "HITS", "IN", "TOKENS", "OUT", "TOKENS",
        "COST", "USD",
    ]  # fmt: skip
    assert lines[1].split() == [
        "2024-05-01", "team-a", "mock-a", "4", "1", "1", "40", "20", "0.030000",
    ]  # fmt: skip
    assert lines[2].split() == ["2024-05-02", "team-a", "mock-b", "1", "0", "0", "100", "50",
                                "0.500000"]  # fmt: skip
    assert lines[3].split() == ["TOTAL", "5", "140", "70", "0.530000"]
    assert await asyncio.to_thread(cli_main, [*argv, "--model", "mock-b", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"totalRequests": "1"' in out and '"model": "mock-b"' in out


async def test_cli_usage_since_accepts_relative_times():
    from llmproxy.client.usage_cli import parse_time

    now = datetime(2024, 5, 10, 12, tzinfo=UTC)
    assert parse_time("7d", now) == datetime(2024, 5, 3, 12, tzinfo=UTC)
    assert parse_time("36h", now) == datetime(2024, 5, 9, 0, tzinfo=UTC)
    assert parse_time("2024-05-01", now) == datetime(2024, 5, 1, tzinfo=UTC)
