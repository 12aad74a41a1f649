"""An HTTP/1.1 transport for httpx, on asyncio protocols and llhttp: the upstream hot path.

httpx stays the API every adapter uses; this is what sits under it. A gRPC relay
through our provider adapter cost about 1.18 ms of CPU per streamed answer on
httpx-aiohttp and 0.83 ms on this transport (bench/floor.py's `provider` server).
The wire side of one socket (llhttp parsing, the body stream) is in http1.py; this
module is the pool.

What it does, as httpcore does: a keep-alive pool per origin under one
`max_connections` cap, idle connections expired after `keepalive_expiry`, the
connect/read/write/pool timeouts of each request, TLS with SNI and verification,
and one retry on a fresh connection when a reused one turns out to have been closed
by the server before it answered anything (the idle-close race every pooled client
meets). A response is read to its end or its connection is closed: a connection is
never reused with bytes of an old answer in flight. No proxies (the gateway calls
its upstreams directly) and no HTTP/2.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

import httpx

from llmproxy.server.providers.http1 import (
    Connection,
    Origin,
    ResponseBody,
    request_body,
    request_head,
)

DEFAULT_PORTS = {b"http": 80, b"https": 443}
# How long the pool goes on reading an answer its reader finished before the body's end (an
# SSE stream after its terminator event: the chunked encoding's last bytes) to reuse its socket.
LINGER_S = 0.25


class HTTPTransport(httpx.AsyncBaseTransport):
    def __init__(
        self, *, limits: httpx.Limits | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        limits = limits or httpx.Limits()
        self._max = limits.max_connections or 1 << 30
        self._max_idle = (
            limits.max_keepalive_connections
            if limits.max_keepalive_connections is not None
            else self._max
        )
        self._expiry = (
            limits.keepalive_expiry if limits.keepalive_expiry is not None else float("inf")
        )
        self._ssl_context = ssl_context
        self._idle: dict[Origin, deque[Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._lingering: set[Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
        timeouts = request.extensions.get("timeout", {})
        origin: Origin = (scheme, url.raw_host, url.port or DEFAULT_PORTS[scheme])
        head = request_head(request)
        body = await request_body(request)
        for fresh in (False, True):
            conn = await self._acquire(origin, timeouts, fresh)
            reused = conn.idle_since != 0.0
            head_only = request.method == "HEAD"
            try:
                await conn.send(head + body if len(body) < 65536 else head, timeouts.get("write"))
                if len(body) >= 65536:
                    await conn.send(body, timeouts.get("write"))
                while not conn.status:
                    if conn.error is not None:
                        raise conn.error
                    await conn.wait(timeouts.get("read"))
                if head_only:  # no body follows, whatever the headers say
                    conn.complete, conn.keep_alive = True, False
            except BaseException as exc:
                conn.close()
                self.release(conn)
                # Closed before a byte came back: stale. A timeout is not: the upstream
                # may be working on the request, and sending it again would run it twice.
                stale = (
                    isinstance(exc, httpx.TransportError)
                    and not isinstance(exc, httpx.TimeoutException)
                    and not conn.got_bytes
                )
                if reused and stale and not fresh:
                    continue  # closed by the server while idle: once more on a new socket
                raise
            break
        body = ResponseBody(conn, self.release, timeouts.get("read"))
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=body,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": conn.reason,
                "finish_in_background": body.finish_in_background,
                "take_ready": body.take_ready,
            },
        )

    async def _acquire(self, origin: Origin, timeouts: dict, fresh: bool) -> Connection:
        """An idle connection to `origin` (unless `fresh`), else a new one within the cap."""
        deadline = None
        while True:
            if not fresh and (conn := self._pop_idle(origin)) is not None:
                return conn
            if self._open < self._max:
                break
            if self._idle_count:
                self._drop(self._oldest_idle())
                continue
            if deadline is None and (pool_timeout := timeouts.get("pool")) is not None:
                deadline = time.monotonic() + pool_timeout
            await self._wait_for_slot(deadline)
        self._open += 1
        try:
            return await self._connect(origin, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._notify_slot()
            raise

    def _pop_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if conn.lost or conn.got_bytes or now - conn.idle_since > self._expiry:
                self._drop(conn)  # closed by the server, spoke out of turn, or too old
                continue
            conn.reset()
            return conn
        return None

    async def _wait_for_slot(self, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        # Not wait_for: on 3.11 it swallows a cancellation that lands as the waiter is
        # handed a slot, and a caller who left would go on to send its request.
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._notify_slot()  # handed a slot it will not take: pass it on
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout(
                    "no upstream connection free within the pool timeout"
                ) from None
            raise
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    def _oldest_idle(self) -> Connection:
        oldest = min((q for q in self._idle.values() if q), key=lambda q: q[0].idle_since)
        self._idle_count -= 1
        return oldest.popleft()

    async def _connect(self, origin: Origin, timeout: float | None) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        kwargs = {}
        if scheme == b"https":
            kwargs = {"ssl": self._ssl(), "server_hostname": hostname}
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(origin), hostname, port, **kwargs
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {hostname}:{port}") from None
        except ssl.SSLError as exc:
            raise httpx.ConnectError(f"TLS handshake with {hostname} failed: {exc}") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {hostname}:{port}: {exc}") from exc
        return conn

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context(trust_env=False)
        return self._ssl_context

    def release(self, conn: Connection, read_rest: bool = False) -> None:
        """The exchange is over: back to the pool if it ended cleanly, else closed.

        `read_rest`: its reader had the whole answer before the body's end, so the rest
        may be read in the background (see ResponseBody.finish_in_background).
        """
        if read_rest:
            conn.take_body()  # unread bytes of an answer its reader had whole: not needed
        if (
            conn.reusable
            and not self._closed
            and self._idle_count < self._max_idle
            and (not conn.body)
        ):
            conn.idle_since = time.monotonic()
            conn.got_bytes = False  # any byte from now on, before a request, is out of turn
            self._idle.setdefault(conn.origin, deque()).append(conn)
            self._idle_count += 1
            self._notify_slot()
            return
        if not (read_rest and self._linger(conn)):
            self._drop(conn)

    def _linger(self, conn: Connection) -> bool:
        """Read the rest of an answer in the background, so the socket can be reused.

        Its reader has what it wanted (an SSE stream's terminator), and waiting for the
        last bytes itself would cost it a timer per answer or, at one stream, a read.
        The connection keeps its slot under the cap until the answer ends (then it is
        pooled) or LINGER_S passes (then it is closed).
        """
        if (
            self._closed
            or conn.complete
            or conn.lost
            or conn.error is not None
            or not conn.status
            or not conn.keep_alive
            or not conn.delimited
            or conn.on_settled is not None
        ):
            return False
        timer = asyncio.get_running_loop().call_later(LINGER_S, self._end_linger, conn, None)
        conn.on_settled = lambda: self._end_linger(conn, timer)
        self._lingering.add(conn)
        return True

    def _end_linger(self, conn: Connection, timer: asyncio.TimerHandle | None) -> None:
        """The answer ended, failed or the socket closed (`timer` to cancel), or time ran out."""
        if conn.on_settled is None:
            return
        conn.on_settled = None
        self._lingering.discard(conn)
        if timer is None:
            self._drop(conn)
            return
        timer.cancel()
        self.release(conn)  # pooled if it ended cleanly, else closed

    def _drop(self, conn: Connection) -> None:
        conn.close()
        self._open -= 1
        self._notify_slot()

    def _notify_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for queue in self._idle.values():
            for conn in queue:
                conn.close()
        self._idle.clear()
        self._idle_count = 0
        for conn in list(self._lingering):
            self._end_linger(conn, None)
