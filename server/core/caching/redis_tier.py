"""The shared tier in Redis: answers and prompt vectors that every replica can read.

Every key a request touches shares one hash tag, so nothing here spans Redis Cluster
slots. Redis is an optimisation, never a dependency: each command has a short
timeout, a failure is logged once and Redis is skipped for `retry_s`, and callers
get "not found" instead of an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
T = TypeVar("T")


class RedisTier:
    def __init__(
        self,
        client: redis.Redis,
        *,
        timeout_s: float,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._clock = clock
        self._retry_at = 0.0
        self._down = False
        # Writes run after the answer has been streamed; kept here so none is lost on close.
        self._writes: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, retry_s: float) -> RedisTier:
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # No client-side retries: one short attempt, then memory-only for a while.
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, timeout_s=timeout_s, retry_s=retry_s)

    @property
    def available(self) -> bool:
        return self._clock() >= self._retry_at

    async def _call(self, op: str, call: Callable[[], Awaitable[T]], default: T) -> T:
        if self._clock() < self._retry_at:
            return default
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._retry_at = self._clock() + self.retry_s
            self._down = True
            log.warning(
                "redis cache tier failed; serving from memory only, retrying in %.1f s",
                self.retry_s,
                extra={"op": op, "error": type(exc).__name__},
            )
            return default
        if self._down:
            self._down = False
            log.info("redis cache tier is reachable again")
        return result

    def _later(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def get_first(self, keys: list[str]) -> tuple[str, bytes] | None:
        """The first of `keys` that holds a value; one MGET (all keys share a slot)."""
        values = await self._call("mget", lambda: self.client.mget(keys), [])
        return next(((k, v) for k, v in zip(keys, values, strict=False) if v is not None), None)

    def set_later(self, key: str, data: bytes, ttl_s: float) -> None:
        if self.available:
            px = max(int(ttl_s * 1000), 1)
            self._later(self._call("set", lambda: self.client.set(key, data, px=px), None))

    async def get(self, key: str) -> bytes | None:
        return await self._call("get", lambda: self.client.get(key), None)

    async def vectors(self, set_key: str) -> dict[bytes, bytes]:
        return await self._call("hgetall", lambda: self.client.hgetall(set_key), {})

    def add_vector_later(
        self,
        set_key: str,
        field: str,
        packed: bytes,
        answer_key: str,
        answer: bytes,
        ttl_s: float,
        max_per_set: int,
        expiry_of: Callable[[bytes], float],
    ) -> None:
        """Store an answer and its prompt vector; trim the set to `max_per_set`, oldest first."""
        if not self.available:
            return
        px = max(int(ttl_s * 1000), 1)

        async def write() -> None:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(answer_key, answer, px=px)
            pipe.hset(set_key, field, packed)
            pipe.pexpire(set_key, px)
            pipe.hlen(set_key)
            *_, size = await pipe.execute()
            if size > max_per_set:
                members = await self.client.hgetall(set_key)
                oldest = sorted(members, key=lambda f: expiry_of(members[f]))
                await self.client.hdel(set_key, *oldest[: size - max_per_set])

        self._later(self._call("add_vector", write, None))

    def forget_later(self, set_key: str, fields: list[bytes]) -> None:
        if fields and self.available:
            self._later(self._call("hdel", lambda: self.client.hdel(set_key, *fields), None))

    async def flush(self) -> None:
        """Wait for the writes in progress (each is bounded by the timeout)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self.client.aclose()
