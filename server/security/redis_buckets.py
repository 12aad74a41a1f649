"""Token buckets in Redis, updated by one Lua script so every replica shares the same limits.

The script reads, refills, checks and charges all of a request's buckets in one
atomic step, using Redis's own clock (replicas' clocks may differ). A request's
keys share one hash tag (the key id), so the script also runs on Redis Cluster.
Buckets expire once they would be full again, so idle callers leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from llmproxy.server.security.buckets import BackendUnavailableError, Bucket, Denial

log = logging.getLogger(__name__)

# ARGV[1] = "take" | "adjust"; then per key: capacity, refill per second, cost.
# Returns {0, "0"} when charged, else {index of the refusing bucket, seconds to wait}.
TAKE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local take = ARGV[1] == 'take'
local levels = {}
local worst, wait = 0, 0
for i = 1, #KEYS do
  local cap, rate, cost = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local state = redis.call('HMGET', KEYS[i], 'l', 't')
  local level = cap
  if state[1] then
    level = math.min(cap, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
  end
  levels[i] = level
  if take then
    local need = math.min(cost, cap)
    if level < need and (need - level) / rate > wait then
      worst, wait = i, (need - level) / rate
    end
  end
end
if worst > 0 then
  return {worst, tostring(wait)}
end
for i = 1, #KEYS do
  local cap, rate, cost = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local level = math.min(cap, levels[i] - cost)
  redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
  redis.call('PEXPIRE', KEYS[i], math.ceil(((cap - level) / rate + 1) * 1000))
end
return {0, '0'}
"""


class RedisBuckets:
    name = "redis"

    def __init__(self, url: str, *, timeout_s: float) -> None:
        # Fail fast: a slow limiter must not stall requests; the caller's policy decides.
        self.client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self.timeout_s = timeout_s
        self._script = self.client.register_script(TAKE_SCRIPT)
        self._pending: set[asyncio.Task[None]] = set()

    async def _run(self, mode: str, buckets: Sequence[Bucket]) -> list:
        args: list[str | float] = [mode]
        for b in buckets:
            args += [b.capacity, b.rate, b.cost]
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._script(keys=[b.key for b in buckets], args=args)
        except (RedisError, OSError, TimeoutError) as error:
            raise BackendUnavailableError(f"redis: {type(error).__name__}: {error}") from None

    async def take(self, buckets: Sequence[Bucket]) -> Denial | None:
        index, wait = await self._run("take", buckets)
        if int(index) == 0:
            return None
        return Denial(buckets[int(index) - 1], float(wait))

    def adjust_soon(self, buckets: Sequence[Bucket]) -> None:
        """Settle in the background: the caller's response must not wait on Redis."""
        task = asyncio.get_running_loop().create_task(self._adjust(buckets))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _adjust(self, buckets: Sequence[Bucket]) -> None:
        try:
            await self._run("adjust", buckets)
        except BackendUnavailableError as error:
            log.warning("rate-limit usage not settled", extra={"error": str(error)})

    async def settled(self) -> None:
        """Wait for the settlements in flight (bounded by the Redis timeout)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self.timeout_s)

    async def close(self) -> None:
        await self.settled()
        await self.client.aclose()
