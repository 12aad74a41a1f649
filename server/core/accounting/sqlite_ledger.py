"""The default ledger backend: one SQLite file in WAL mode, written from one worker thread.

sqlite3 blocks, so every call runs on a dedicated single-thread executor; the
event loop only awaits it. WAL lets GetUsage (and other processes on the host)
read while a batch is written. synchronous=NORMAL: a committed batch survives a
process crash; an OS crash or power loss may also lose the last batches.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
    "ts": "REAL",
    "input_tokens": "INTEGER",
    "output_tokens": "INTEGER",
    "cached_input_tokens": "INTEGER",
    "cost_usd": "REAL",
    "latency_ms": "REAL",
    "estimated": "INTEGER",
}


class SqliteLedger:
    def __init__(self, path: str | Path, table: str = "llmproxy_usage") -> None:
        self.path = str(path)
        self.table = table  # validated as an SQL identifier by LedgerConfig
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._db: sqlite3.Connection | None = None
        self._closed = False
        self._insert = (
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        )

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._call(self._open)

    async def write(self, records: list[UsageRecord]) -> None:
        await self._call(self._write, records)

    async def aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        return await self._call(self._aggregate, where)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._call(self._close)
        self._executor.shutdown(wait=True)

    # --- on the worker thread ---------------------------------------------------

    def _open(self) -> None:
        if self._db is not None:
            return
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        columns = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')} NOT NULL" for c in COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id INTEGER PRIMARY KEY, {columns})")
        db.execute(f"CREATE INDEX IF NOT EXISTS {self.table}_ts ON {self.table} (ts)")
        self._db = db

    def _write(self, records: list[UsageRecord]) -> None:
        assert self._db is not None
        with self._db:  # one transaction: all rows or none
            # IMMEDIATE takes the write lock up front, waiting up to busy_timeout for other
            # writers (worker processes); a deferred BEGIN that must upgrade a read to a
            # write fails at once with SQLITE_BUSY if another process wrote in between.
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(self._insert, map(as_row, records))

    def _aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        assert self._db is not None
        hits = ", ".join(f"'{h}'" for h in CACHE_HITS)
        sql = [
            "SELECT strftime('%Y-%m-%d', ts, 'unixepoch') AS day, key_id, model, count(*),",
            f" sum(status != '{OK}'), sum(cache_status IN ({hits})),",
            " sum(input_tokens), sum(output_tokens), sum(cost_usd)",
            f" FROM {self.table} WHERE ts >= ? AND ts < ?",
        ]
        args: list[object] = [where.start, where.end]
        if where.key_id:
            sql.append(" AND key_id = ?")
            args.append(where.key_id)
        if where.model:
            sql.append(" AND model = ?")
            args.append(where.model)
        sql.append(" GROUP BY day, key_id, model ORDER BY day, key_id, model")
        return [UsageAggregate(*row) for row in self._db.execute("".join(sql), args)]

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
