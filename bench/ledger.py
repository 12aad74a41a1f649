"""Benchmarks what accounting costs a request, and how fast the usage ledger writes.

Measured in one run, all in-process or on loopback, each with a fixed count:

  1. the accounting stage's added time per request: the same synthetic stream
     (Started, 20 deltas, Completed) iterated bare and through
     `UsageAccounting.track`, with the ledger only, and with a budget in memory,
     Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432); p50/p99 in µs;
  2. `LedgerWriter.enqueue` per record (the only ledger work on a request);
  3. ledger write throughput under load: N requests through the stage from 64
     concurrent tasks while the writer flushes in the background (SQLite in its
     thread, PostgreSQL over asyncpg), records/s written and the requests/s the
     event loop sustained meanwhile; then the time App.stop's final flush takes.

Prints a Markdown table and writes JSON to bench/results/.

    .venv/bin/python bench/ledger.py [--requests 20000] [--no-redis] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from llmproxy.server.config.caching import BudgetConfig
from llmproxy.server.config.providers import ModelConfig, Price
from llmproxy.server.core.accounting.budgets import Budgets, MemoryBudgetStore
from llmproxy.server.core.accounting.ledger import LedgerWriter
from llmproxy.server.core.accounting.records import UsageRecord
from llmproxy.server.core.accounting.stage import UsageAccounting
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CallContext,
    Completed,
    FinishReason,
    Message,
    Parameters,
    QueryEvent,
    QueryInput,
    Role,
    Started,
    TextDelta,
    Usage,
)

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
RESULTS = Path(__file__).parent / "results"
PRICE = Price(input_per_mtok=2.5, output_per_mtok=10.0)
DEPLOYMENT = Deployment(
    ModelConfig(name="bench", provider="p", context_window=128_000, price=PRICE),
    None,  # type: ignore[arg-type]
)
QUERY = QueryInput(
    messages=(Message(Role.SYSTEM, "Be brief."), Message(Role.USER, "Say hello to the bench.")),
    model="bench",
    params=Parameters(max_tokens=64),
    request_id="bench",
)
WORDS = [TextDelta(f" w{i}") for i in range(20)]


async def events() -> AsyncIterator[QueryEvent]:
    yield Started("bench", "p")
    for delta in WORDS:
        yield delta
    yield Completed("bench", "p", Usage(20, 20), FinishReason.STOP, "stop", 1, 1, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def per_request(stage: UsageAccounting | None, n: int, key_id: str) -> list[float]:
    """Seconds per request, iterating the stream bare (stage None) or through the stage."""
    times = []
    for _ in range(n):
        ctx = CallContext(key_id=key_id, started_at=time.perf_counter())
        stream = events() if stage is None else stage.track(QUERY, ctx, [DEPLOYMENT], events())
        t0 = time.perf_counter()
        async for _ in stream:
            pass
        times.append(time.perf_counter() - t0)
        if stage is not None and stage._settles:
            await stage.drain()  # keep settles from piling up into the next sample
    return times


class NullLedger:
    async def open(self) -> None: ...
    async def write(self, records) -> None: ...
    async def aggregate(self, where):
        return []

    async def close(self) -> None: ...


@contextlib.asynccontextmanager
async def budget_store(kind: str):
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    if kind == "memory":
        yield MemoryBudgetStore()
        return
    if kind == "redis":
        from llmproxy.server.core.accounting.redis_budgets import RedisBudgetStore

        store = RedisBudgetStore(REDIS_URL, prefix)
        try:
            yield store
        finally:
            async for key in store.client.scan_iter(match=f"{prefix}:*"):
                await store.client.delete(key)
            await store.close()
        return
    from llmproxy.server.core.accounting.postgres_budgets import PostgresBudgetStore

    store = PostgresBudgetStore(PG_DSN, prefix)
    try:
        yield store
    finally:
        pool = await store._ready()
        await pool.execute(f"DROP TABLE IF EXISTS {store.spend}, {store.holds}")
        await pool.execute(f"DROP FUNCTION {prefix}_budget_reserve, {prefix}_budget_settle")
        await store.close()


async def stage_overhead(n: int, stores: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}

    def summary(times: list[float], base: list[float] | None = None) -> dict[str, float]:
        row = {"p50_us": percentile(times, 0.5) * 1e6, "p99_us": percentile(times, 0.99) * 1e6}
        if base is not None:
            row["added_p50_us"] = row["p50_us"] - percentile(base, 0.5) * 1e6
            row["added_p99_us"] = row["p99_us"] - percentile(base, 0.99) * 1e6
        return row

    await per_request(None, 200, "")  # warm up
    base = await per_request(None, n, "")
    out["bare stream"] = summary(base)
    stage = UsageAccounting(ledger=LedgerWriter(NullLedger(), flush_interval_s=3600))
    await per_request(stage, 200, "k")
    out["stage, ledger only"] = summary(await per_request(stage, n, "k"), base)
    for kind in stores:
        async with budget_store(kind) as store:
            budgets = Budgets([BudgetConfig(key_id="k", limit_usd=1e9)], store)
            stage = UsageAccounting(
                budgets=budgets, ledger=LedgerWriter(NullLedger(), flush_interval_s=3600)
            )
            await per_request(stage, 50, "k")
            count = n if kind == "memory" else max(n // 10, 200)
            out[f"stage, ledger + {kind} budget"] = summary(
                await per_request(stage, count, "k"), base
            )
    return out


def enqueue_cost(n: int) -> float:
    writer = LedgerWriter(NullLedger(), flush_interval_s=3600, max_pending=n + 1)
    record = UsageRecord(time.time(), "r", "k", "m", "p", "OK", "miss", 1, 1, 0, 0.0, 1.0)
    t0 = time.perf_counter()
    for _ in range(n):
        writer.enqueue(record)
    return (time.perf_counter() - t0) / n * 1e9


async def write_throughput(kind: str, n: int, interval_s: float) -> dict[str, float]:
    """n requests through the stage from 64 tasks while the writer flushes every interval_s."""
    table = f"bench_{uuid.uuid4().hex[:8]}"
    tmp = tempfile.TemporaryDirectory()
    if kind == "sqlite":
        from llmproxy.server.core.accounting.sqlite_ledger import SqliteLedger

        backend = SqliteLedger(Path(tmp.name) / "usage.db", table)
    else:
        from llmproxy.server.core.accounting.postgres_ledger import PostgresLedger

        backend = PostgresLedger(PG_DSN, table)
    writer = LedgerWriter(backend, flush_interval_s=interval_s, max_batch=5000)
    await writer.start()
    stage = UsageAccounting(ledger=writer)
    per_task = n // 64

    async def producer() -> None:
        for _ in range(per_task):
            ctx = CallContext(key_id="k", started_at=time.perf_counter())
            async for _ in stage.track(QUERY, ctx, [DEPLOYMENT], events()):
                pass
            await asyncio.sleep(0)

    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(64)))
    load_s = time.perf_counter() - t0
    written_during = writer.written
    t1 = time.perf_counter()
    await writer.flush()  # what App.stop's final flush does
    final_s = time.perf_counter() - t1
    total_s = time.perf_counter() - t0
    if kind == "postgres":
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    await writer.stop()
    tmp.cleanup()
    requests = per_task * 64
    assert writer.written == requests, (writer.written, requests)
    return {
        "requests": requests,
        "requests_per_s": requests / load_s,
        "records_per_s": requests / total_s,
        "written_during_load": written_during,
        "final_flush_ms": final_s * 1000,
    }


def render(results: dict) -> str:
    lines = [
        f"## Accounting / ledger bench ({results['machine']})",
        "",
        "| stage per request | p50 µs | p99 µs | added p50 µs | added p99 µs |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["stage"].items():
        lines.append(
            f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | "
            f"{row.get('added_p50_us', 0):.1f} | {row.get('added_p99_us', 0):.1f} |"
        )
    lines += ["", f"`LedgerWriter.enqueue`: {results['enqueue_ns']:.0f} ns per record", ""]
    lines += [
        "| ledger under load | requests | requests/s | records/s written | final flush ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in results["throughput"].items():
        lines.append(
            f"| {name} | {row['requests']} | {row['requests_per_s']:.0f} | "
            f"{row['records_per_s']:.0f} | {row['final_flush_ms']:.1f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict:
    stores = (
        ["memory"] + (["redis"] if args.redis else []) + (["postgres"] if args.postgres else [])
    )
    results: dict = {
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        "stage": await stage_overhead(args.samples, stores),
        "enqueue_ns": enqueue_cost(200_000),
        "throughput": {},
    }
    for kind in ["sqlite"] + (["postgres"] if args.postgres else []):
        results["throughput"][kind] = await write_throughput(kind, args.requests, 0.5)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=5_000)
    parser.add_argument("--no-redis", dest="redis", action="store_false")
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    args = parser.parse_args()
    args.requests = min(args.requests, 200_000)  # bounded
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    results = asyncio.run(run(args))
    print(render(results))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"ledger-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
