"""An HTTP/1.1 transport for httpx, on asyncio protocols and llhttp: the upstream hot path.

httpx stays the API every adapter uses; this is what sits under it. A gRPC relay
through our provider adapter cost about 1.18 ms of CPU per streamed answer on
httpx-aiohttp and 0.83 ms on this transport (bench/floor.py's `provider` server):
bytes go from the socket through llhttp (httptools, C) into a list that the reader
drains in one piece, with no task, queue or timer handle per chunk.

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
from collections.abc import AsyncIterator

import httptools
import httpx

DEFAULT_PORTS = {b"http": 80, b"https": 443}
# Unread body bytes held per connection before the socket stops being read.
HIGH_WATER = 256 * 1024

Origin = tuple[bytes, bytes, int]


class _Connection(asyncio.Protocol):
    """One socket to one origin; it carries one exchange at a time."""

    __slots__ = (
        "_close_delimited",
        "_drained",
        "_paused",
        "_waiter",
        "body",
        "buffered",
        "complete",
        "error",
        "got_bytes",
        "headers",
        "idle_since",
        "keep_alive",
        "lost",
        "origin",
        "parser",
        "reason",
        "status",
        "transport",
    )

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._paused = False
        self.reset()

    def reset(self) -> None:
        """Ready for the next exchange."""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.got_bytes = False
        self._close_delimited = True

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(httpx.RemoteProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.status and not self.complete and self._close_delimited:
            self.complete = True  # a body without length or chunking ends at EOF
        elif not self.complete and self.error is None:
            self.error = httpx.RemoteProtocolError(
                "server disconnected without sending a complete response"
                if self.got_bytes
                else "server disconnected without sending a response"
            )
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # llhttp callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._close_delimited = False

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            self.headers, self.reason, self._close_delimited = [], b"", True
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()
        if status in (204, 304):
            self._close_delimited = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.lost and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.status:  # not the end of an interim response
            self.complete = True
            self._wake()

    # the exchange

    def _fail(self, error: Exception) -> None:
        self.error = error
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None) -> None:
        """Until the parser has something new (or the connection ends)."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    async def send(self, data: bytes, timeout: float | None) -> None:
        assert self.transport is not None
        if self.lost:
            raise self.error or httpx.WriteError("connection closed")
        self.transport.write(data)
        if self._paused:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow a cancel
                    await self._drained
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            finally:
                self._drained = None
            if self.lost and self.error is not None:
                raise self.error

    def take_body(self) -> bytes:
        """Everything received since the last call, in one piece."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        self.body = []
        if self.buffered > HIGH_WATER and not self.lost and self.transport is not None:
            self.transport.resume_reading()
        self.buffered = 0
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost and self.error is None

    def close(self) -> None:
        if self.transport is not None and not self.lost:
            self.transport.close()
        self.lost = True


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out waiting for the upstream"))


class _ResponseBody(httpx.AsyncByteStream):
    """The body as it arrives: each step yields all bytes received since the last one."""

    __slots__ = ("_closed", "_conn", "_read_timeout", "_transport")

    def __init__(self, conn: _Connection, transport: HTTPTransport, read_timeout: float | None):
        self._conn = conn
        self._transport = transport
        self._read_timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                if conn.body:
                    yield conn.take_body()
                elif conn.complete:
                    break
                elif conn.error is not None:
                    raise conn.error
                else:
                    await conn.wait(self._read_timeout)
        finally:
            self._finish()

    async def aclose(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._transport.release(self._conn)


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
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
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
        head = _request_head(request)
        body = await _request_body(request)
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
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=_ResponseBody(conn, self, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def _acquire(self, origin: Origin, timeouts: dict, fresh: bool) -> _Connection:
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

    def _pop_idle(self, origin: Origin) -> _Connection | None:
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

    def _oldest_idle(self) -> _Connection:
        oldest = min((q for q in self._idle.values() if q), key=lambda q: q[0].idle_since)
        self._idle_count -= 1
        return oldest.popleft()

    async def _connect(self, origin: Origin, timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        hostname = host.decode("ascii")
        kwargs = {}
        if scheme == b"https":
            kwargs = {"ssl": self._ssl(), "server_hostname": hostname}
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin), hostname, port, **kwargs
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

    def release(self, conn: _Connection) -> None:
        """The exchange is over: back to the pool if it ended cleanly, else closed."""
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
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
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


def _request_head(request: httpx.Request) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def _request_body(request: httpx.Request) -> bytes:
    """The whole body: requests to upstreams are small JSON documents, already in memory."""
    try:
        body = request.content
    except httpx.RequestNotRead:
        body = await request.aread()
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        # httpx announced chunks for a streamed body of unknown length; read whole, it is one.
        return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return body
