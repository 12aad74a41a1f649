"""Budget state in PostgreSQL, shared by every replica; row locks make each reserve atomic.

Two tables: `<prefix>_budget_spend` (one row per key, period and start, holding
settled spend) and `<prefix>_budget_holds` (one row per in-flight reservation and
slot, with its expiry). A reserve locks the key's spend rows (FOR UPDATE, in name
order so concurrent reserves cannot deadlock), drops expired holds, and checks
spend + holds against each limit, all in one transaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg

from llmproxy.server.core.accounting.budgets import Refusal, Slot


class PostgresBudgetStore:
    def __init__(self, dsn: str, prefix: str = "llmproxy") -> None:
        self.dsn = dsn
        self.spend = f"{prefix}_budget_spend"  # prefix validated as an SQL identifier
        self.holds = f"{prefix}_budget_holds"
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _ready(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._lock:
            if self._pool is None:
                self._pool = await self._connect()
        return self._pool

    async def _connect(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=5)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.spend)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.spend} (slot text PRIMARY KEY, "
                    "spent bigint NOT NULL DEFAULT 0)"
                )
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.holds} (id text NOT NULL, "
                    "slot text NOT NULL, amount bigint NOT NULL, "
                    "expires_at double precision NOT NULL, PRIMARY KEY (slot, id))"
                )
        except BaseException:
            await pool.close()
            raise
        return pool

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        pool = await self._ready()
        names = sorted(s.name for s in slots)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {self.spend} (slot) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                names,
            )
            spent = dict(
                await conn.fetch(
                    f"SELECT slot, spent FROM {self.spend} WHERE slot = ANY($1) "
                    "ORDER BY slot FOR UPDATE",
                    names,
                )
            )
            await conn.execute(
                f"DELETE FROM {self.holds} WHERE slot = ANY($1) AND expires_at < $2",
                names,
                time.time(),
            )
            held = dict(
                await conn.fetch(
                    f"SELECT slot, sum(amount)::bigint FROM {self.holds} "
                    "WHERE slot = ANY($1) GROUP BY slot",
                    names,
                )
            )
            for slot in slots:
                s, h = spent.get(slot.name, 0), held.get(slot.name, 0)
                if s + h >= slot.limit:
                    return Refusal(slot, s, h)
            await conn.execute(
                f"INSERT INTO {self.holds} (id, slot, amount, expires_at) "
                "SELECT $1, unnest($2::text[]), $3, $4",
                rid,
                names,
                amount,
                expires_at,
            )
        return None

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        pool = await self._ready()
        names = sorted(s.name for s in slots)
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"DELETE FROM {self.holds} WHERE slot = ANY($1) AND id = $2", names, rid
            )
            if spent:
                await conn.execute(
                    f"UPDATE {self.spend} SET spent = spent + $2 WHERE slot = ANY($1)",
                    names,
                    spent,
                )

    async def usage(self, slot: Slot) -> tuple[int, int]:
        pool = await self._ready()
        spent = await pool.fetchval(f"SELECT spent FROM {self.spend} WHERE slot = $1", slot.name)
        held = await pool.fetchval(
            f"SELECT coalesce(sum(amount), 0)::bigint FROM {self.holds} WHERE slot = $1",
            slot.name,
        )
        return int(spent or 0), int(held or 0)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
