"""One HTTP/1.1 connection to an upstream: the wire side of transport.py.

A `Connection` is an asyncio protocol that feeds the socket's bytes to llhttp
(httptools, C) and keeps the response's status, headers and unread body; the
reader drains all body bytes received so far in one piece (`ResponseBody`), with
no task, queue or timer handle per chunk. Unread bytes above `HIGH_WATER` pause
the socket. The pool that owns connections is in transport.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httptools
import httpx

# Unread body bytes held per connection before the socket stops being read.
HIGH_WATER = 256 * 1024

Origin = tuple[bytes, bytes, int]


class Connection(asyncio.Protocol):
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
        "on_settled",
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
        # Set while the pool reads the rest of an answer its reader left (transport.py):
        # called once the answer ends, fails or the socket closes.
        self.on_settled: Callable[[], None] | None = None
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
            return
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            return
        if self.on_settled is not None:  # nobody reads these: the pool waits for the end
            self.body.clear()
            self.buffered = 0
            if self.complete:
                self.on_settled()
            return
        # One wake-up per read, not one per chunk: an SSE upstream sends a chunk per token.
        if self.buffered > HIGH_WATER and not self.lost and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

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
        if self.on_settled is not None:
            self.on_settled()

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

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.status:  # not the end of an interim response
            self.complete = True

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
    def delimited(self) -> bool:
        """Whether the answer's end is in its bytes (a length or chunks), not the socket's EOF."""
        return not self._close_delimited

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


class ResponseBody(httpx.AsyncByteStream):
    """The body as it arrives: each step yields all bytes received since the last one."""

    __slots__ = ("_closed", "_conn", "_read_rest", "_read_timeout", "_release")

    def __init__(
        self,
        conn: Connection,
        release: Callable[[Connection, bool], None],
        read_timeout: float | None,
    ) -> None:
        self._conn = conn
        self._release = release
        self._read_timeout = read_timeout
        self._closed = False
        self._read_rest = False

    def finish_in_background(self) -> None:
        """The reader has the whole answer (an SSE terminator event): when it closes the
        body, the pool may read the bytes still due (chunked encoding's end) to reuse the
        socket. Any other early close ends the exchange at once, upstream call included.
        Offered to adapters as the response extension of the same name."""
        self._read_rest = True

    def take_ready(self) -> bytes:
        """The body bytes received but not yet read, without waiting for more (b"" if none).
        Offered to adapters as the response extension of the same name."""
        return self._conn.take_body() if self._conn.body and not self._closed else b""

    def __aiter__(self) -> ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        """An iterator, not an async generator: a reader that stops early (at the SSE
        terminator) leaves no suspended generator for the event loop to finalise, which
        costs a task and a cross-thread wake-up per response."""
        conn = self._conn
        try:
            while not self._closed:
                if conn.body:
                    return conn.take_body()
                if conn.complete:
                    break
                if conn.error is not None:
                    raise conn.error
                await conn.wait(self._read_timeout)
            raise StopAsyncIteration
        except BaseException:  # the end, an error, or a cancelled wait: the exchange is over
            self._finish()
            raise

    async def aclose(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._closed:
            self._closed = True
            self._release(self._conn, self._read_rest)


def request_head(request: httpx.Request) -> bytes:
    url = request.url
    target = url.raw_path or b"/"
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


async def request_body(request: httpx.Request) -> bytes:
    """The whole body: requests to upstreams are small JSON documents, already in memory."""
    if isinstance(request.stream, httpx.ByteStream):
        body = b"".join(request.stream)  # bytes in memory: no async read of one piece
    else:
        try:
            body = request.content
        except httpx.RequestNotRead:
            body = await request.aread()
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        # httpx announced chunks for a streamed body of unknown length; read whole, it is one.
        return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return body
