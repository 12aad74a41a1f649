"""Raw HTTP/1.1 loopback servers for the transport tests: exactly the bytes each case needs."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable

import httpx

from llmproxy.server.providers.transport import HTTPTransport

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Peer:
    """One socket the server accepted, and the requests it read from it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.requests: list[tuple[bytes, bytes]] = []
        self.hung_up = asyncio.Event()  # the client closed its end

    async def read_request(self) -> tuple[bytes, bytes] | None:
        """The next complete request (head, body), or None when the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.hung_up.set()
            return None
        lowered = head.lower()
        body = b""
        if match := re.search(rb"\r\ncontent-length: *(\d+)", lowered):
            body = await self.reader.readexactly(int(match[1]))
        elif b"\r\ntransfer-encoding: chunked" in lowered:
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            await self.reader.readuntil(b"\r\n")
        self.requests.append((head, body))
        return head, body

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_to_eof(self, within: float = 10.0) -> bool:
        """Discards what else the client sends; whether it hung up within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        self.hung_up.set()
        return True

    async def sees_hang_up(self, within: float = 1.0) -> bool:
        """Whether the client closes this socket within `within` seconds."""
        try:
            async with asyncio.timeout(within):
                await self.hung_up.wait()
        except TimeoutError:
            return False
        return True


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """asyncio.start_server on 127.0.0.1:0; counts accepted and concurrently open sockets."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._tasks: set[asyncio.Task] = set()
        self.peers: list[Peer] = []
        self.open = 0
        self.peak = 0
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self._ssl)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        peer = Peer(reader, writer)
        self.peers.append(peer)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self._handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self.open -= 1
            writer.close()


def answer_each(raw: bytes, *, close: bool = False, delay: float = 0.0) -> Handler:
    """Answers every request on a socket with `raw`; with `close`, hangs up after the first."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await asyncio.sleep(delay)
            await peer.send(raw)
            if close:
                return

    return handler


async def hang(peer: Peer) -> None:
    """Reads the request and never answers; returns when the client hangs up."""
    await peer.read_request()
    await peer.read_to_eof()


def client_for(*, timeout: float = 2.0, **limits: float) -> httpx.AsyncClient:
    transport = HTTPTransport(limits=httpx.Limits(**limits))
    return httpx.AsyncClient(transport=transport, timeout=timeout)


async def unfinished(peer: Peer) -> None:
    """Sends the head and one chunk of a body that never ends, until the client hangs up."""
    await peer.read_request()
    await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nmore\r\n")
    await peer.read_to_eof()
