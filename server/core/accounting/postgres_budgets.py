"""Budget state in PostgreSQL, shared by every replica; each change is one function call.

Two tables: `<prefix>_budget_spend` (one row per key, period and start, holding
settled spend) and `<prefix>_budget_holds` (one row per in-flight reservation and
slot, with its expiry). Reserve and settle are PL/pgSQL functions, so each is one
round trip and one transaction: reserve locks the key's spend rows (FOR UPDATE,
in slot order so concurrent calls cannot deadlock), drops expired holds (left by
a replica that died), and checks spend + holds against every limit.

Both functions commit with synchronous_commit off: no WAL flush on the request
path (about half the cost of a reserve here). The price: if PostgreSQL itself
crashes, budget changes of its last few hundred milliseconds can be lost, so
spend in that window is undercounted. The usage ledger is unaffected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import asyncpg

from llmproxy.server.core.accounting.budgets import Refusal, Slot

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {spend} (slot text PRIMARY KEY, spent bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS {holds} (
    id text NOT NULL, slot text NOT NULL, amount bigint NOT NULL,
    expires_at double precision NOT NULL, PRIMARY KEY (slot, id));
CREATE OR REPLACE FUNCTION {prefix}_budget_reserve(
    p_slots text[], p_limits bigint[], p_id text, p_amount bigint,
    p_expires double precision, p_now double precision)
RETURNS TABLE (r_index int, r_spent bigint, r_held bigint) LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
    h bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO {spend} (slot) SELECT x FROM unnest(p_slots) x ORDER BY x ON CONFLICT DO NOTHING;
    PERFORM 1 FROM {spend} WHERE slot = ANY(p_slots) ORDER BY slot FOR UPDATE;
    DELETE FROM {holds} WHERE slot = ANY(p_slots) AND expires_at < p_now;
    FOR i IN 1 .. array_length(p_slots, 1) LOOP
        SELECT b.spent INTO s FROM {spend} b WHERE b.slot = p_slots[i];
        SELECT coalesce(sum(d.amount), 0) INTO h FROM {holds} d WHERE d.slot = p_slots[i];
        IF s + h >= p_limits[i] THEN
            RETURN QUERY SELECT i, s, h;
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO {holds} (id, slot, amount, expires_at)
        SELECT p_id, x, p_amount, p_expires FROM unnest(p_slots) x;
    RETURN QUERY SELECT 0, 0::bigint, 0::bigint;
END $$;
CREATE OR REPLACE FUNCTION {prefix}_budget_settle(p_slots text[], p_id text, p_spent bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM {spend} WHERE slot = ANY(p_slots) ORDER BY slot FOR UPDATE;
    DELETE FROM {holds} WHERE slot = ANY(p_slots) AND id = p_id;
    IF p_spent > 0 THEN
        UPDATE {spend} SET spent = spent + p_spent WHERE slot = ANY(p_slots);
    END IF;
END $$;
"""


class PostgresBudgetStore:
    suspends = True

    def __init__(self, dsn: str, prefix: str = "llmproxy") -> None:
        self.dsn = dsn
        self.prefix = prefix  # validated as an SQL identifier by BudgetStoreConfig
        self.spend = f"{prefix}_budget_spend"
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
                # Replicas starting together must not race on CREATE OR REPLACE.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self.spend)
                await conn.execute(
                    _SCHEMA.format(spend=self.spend, holds=self.holds, prefix=self.prefix)
                )
        except BaseException:
            await pool.close()
            raise
        return pool

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        pool = await self._ready()
        index, spent, held = await pool.fetchrow(
            f"SELECT * FROM {self.prefix}_budget_reserve($1, $2, $3, $4, $5, $6)",
            [s.name for s in slots],
            [s.limit for s in slots],
            rid,
            amount,
            expires_at,
            time.time(),
        )
        return None if index == 0 else Refusal(slots[index - 1], spent, held)

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        pool = await self._ready()
        await pool.execute(
            f"SELECT {self.prefix}_budget_settle($1, $2, $3)", [s.name for s in slots], rid, spent
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
