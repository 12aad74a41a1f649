"""Budget state in Redis, shared by every replica; each change is one Lua script, so atomic.

Per slot there are two keys: a hash (`spent`, `reserved`, and `r:<id>` per
reservation) and a sorted set of reservation expiry times, so a reservation left
by a replica that died is released by the next reserve. Every key of one API key
carries the same hash tag `{<key_id>}`: a key's budgets live in one Redis Cluster
slot and one script may touch them all. Keys expire a day after their period.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as redis

from llmproxy.server.core.accounting.budgets import Refusal, Slot

_RESERVE = """
local rid, amount, expires, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local n = #KEYS / 2
for i = 1, n do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local stale = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, id in ipairs(stale) do
    local held = redis.call('HGET', h, 'r:' .. id)
    if held then
      redis.call('HINCRBY', h, 'reserved', -tonumber(held))
      redis.call('HDEL', h, 'r:' .. id)
    end
    redis.call('ZREM', z, id)
  end
  local spent = redis.call('HGET', h, 'spent') or '0'
  local reserved = redis.call('HGET', h, 'reserved') or '0'
  if tonumber(spent) + tonumber(reserved) >= tonumber(ARGV[3 + 2 * i]) then
    return {i, spent, reserved}
  end
end
for i = 1, n do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], ARGV[4 + 2 * i]
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('HSET', h, 'r:' .. rid, amount)
  redis.call('ZADD', z, expires, rid)
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
end
return {0, '0', '0'}
"""

_SETTLE = """
local rid, spent = ARGV[1], tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 + i]
  local held = redis.call('HGET', h, 'r:' .. rid)
  if held then
    redis.call('HINCRBY', h, 'reserved', -tonumber(held))
    redis.call('HDEL', h, 'r:' .. rid)
  end
  redis.call('ZREM', z, rid)
  if spent > 0 then
    redis.call('HINCRBY', h, 'spent', spent)
  end
  redis.call('EXPIRE', h, ttl)
end
return 0
"""

KEEP_AFTER_PERIOD_S = 86_400


class RedisBudgetStore:
    suspends = True

    def __init__(self, url: str, prefix: str = "llmproxy", *, timeout_s: float = 1.0) -> None:
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.prefix = prefix
        self._reserve = self.client.register_script(_RESERVE)
        self._settle = self.client.register_script(_SETTLE)

    def keys(self, slot: Slot) -> tuple[str, str]:
        base = f"{self.prefix}:budget:{{{slot.key_id}}}:{slot.period}:{slot.start}"
        return base, base + ":holds"

    @staticmethod
    def _ttl(slot: Slot, now: float) -> int:
        return max(int(slot.resets_at - now), 1) + KEEP_AFTER_PERIOD_S

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        now = time.time()
        keys = [k for s in slots for k in self.keys(s)]
        args: list[object] = [rid, amount, expires_at, now]
        for slot in slots:
            args += [slot.limit, self._ttl(slot, now)]
        index, spent, reserved = await self._reserve(keys=keys, args=args)
        if int(index) == 0:
            return None
        return Refusal(slots[int(index) - 1], int(spent), int(reserved))

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        now = time.time()
        keys = [k for s in slots for k in self.keys(s)]
        await self._settle(keys=keys, args=[rid, spent, *(self._ttl(s, now) for s in slots)])

    async def usage(self, slot: Slot) -> tuple[int, int]:
        spent, reserved = await self.client.hmget(self.keys(slot)[0], "spent", "reserved")
        return int(spent or 0), int(reserved or 0)

    async def close(self) -> None:
        await self.client.aclose()
