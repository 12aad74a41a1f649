"""A fake upstream HTTP server on a real loopback socket, recording what it receives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeUpstream:
    base_url: str
    requests: list[Recorded] = field(default_factory=list)
    # Connections the server saw closed by the client mid-response (cancellation reached us).
    disconnects: int = 0
    open_streams: int = 0
    events: dict[str, asyncio.Event] = field(default_factory=dict)

    def event(self, name: str) -> asyncio.Event:
        return self.events.setdefault(name, asyncio.Event())


FAKE = web.AppKey("fake", FakeUpstream)


@contextlib.asynccontextmanager
async def serve_upstream(app: web.Application) -> AsyncIterator[FakeUpstream]:
    """Serve `app` on 127.0.0.1:<free port>; handlers find the FakeUpstream in app[FAKE]."""
    fake = FakeUpstream(base_url="")
    app[FAKE] = fake
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield fake
    finally:
        await runner.cleanup()


async def record(request: web.Request) -> Recorded:
    fake = request.app[FAKE]
    entry = Recorded(
        request.method,
        request.path,
        dict(request.query),
        {k.lower(): v for k, v in request.headers.items()},
        await request.read(),
    )
    fake.requests.append(entry)
    return entry
