"""The PostgreSQL ledger backend: batches go in with COPY over a small asyncpg pool.

Timestamps are stored as timestamptz and days are UTC, so every replica writing
to the same table aggregates the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from llmproxy.server.core.accounting.records import (
    CACHE_HITS,
    COLUMNS,
    OK,
    UsageAggregate,
    UsageFilter,
    UsageRecord,
    as_row,
)

_TYPES = {
    "ts": "timestamptz",
    "input_tokens": "bigint",
    "output_tokens": "bigint",
    "cached_input_tokens": "bigint",
    "cost_usd": "double precision",
    "latency_ms": "double precision",
    "estimated": "boolean",
}
_TS = COLUMNS.index("ts")


class PostgresLedger:
    def __init__(self, dsn: str, table: str = "llmproxy_usage") -> None:
        self.dsn = dsn
        self.table = table  # validated as an SQL identifier by LedgerConfig
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2, command_timeout=30)
        try:
            await self._create_table(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def _create_table(self, pool: asyncpg.Pool) -> None:
        columns = ", ".join(f"{c} {_TYPES.get(c, 'text')} NOT NULL" for c in COLUMNS)
        async with pool.acquire() as conn, conn.transaction():
            # Replicas starting together must not race on CREATE TABLE.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.table)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                f"(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {columns})"
            )
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_ts ON {self.table} (ts)")

    async def write(self, records: list[UsageRecord]) -> None:
        assert self._pool is not None
        rows = []
        for record in records:
            row = list(as_row(record))
            row[_TS] = datetime.fromtimestamp(record.ts, UTC)
            rows.append(row)
        async with self._pool.acquire() as conn:
            await conn.copy_records_to_table(self.table, records=rows, columns=COLUMNS)

    async def aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        assert self._pool is not None
        hits = ", ".join(f"'{h}'" for h in CACHE_HITS)
        sql = [
            "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, key_id, model,",
            f" count(*), count(*) FILTER (WHERE status <> '{OK}'),",
            f" count(*) FILTER (WHERE cache_status IN ({hits})),",
            " sum(input_tokens)::bigint, sum(output_tokens)::bigint, sum(cost_usd)",
            f" FROM {self.table} WHERE ts >= $1 AND ts < $2",
        ]
        args: list[object] = [
            datetime.fromtimestamp(where.start, UTC),
            datetime.fromtimestamp(where.end, UTC),
        ]
        if where.key_id:
            args.append(where.key_id)
            sql.append(f" AND key_id = ${len(args)}")
        if where.model:
            args.append(where.model)
            sql.append(f" AND model = ${len(args)}")
        sql.append(" GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
        rows = await self._pool.fetch("".join(sql), *args)
        return [UsageAggregate(*r) for r in rows]

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
