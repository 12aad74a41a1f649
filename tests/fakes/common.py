"""What every fake upstream shares: JSON error answers, SSE frames, and the bookkeeping of one
streamed answer (open stream count, `started:`/`disconnected:` events, disconnects)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NoReturn

import orjson
from aiohttp import web

from tests.support.upstream import FAKE


def json_error(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, headers=headers, content_type="application/json", body=body)


def sse(data: object, *, event: str = "", eol: bytes = b"\n") -> bytes:
    """One SSE frame: an `event:` line if named, one `data:` line of JSON, a blank line."""
    head = b"event: " + event.encode() + eol if event else b""
    return head + b"data: " + orjson.dumps(data) + eol + eol


def typed_sse(data: dict) -> bytes:
    """An SSE frame named after its payload's `type` (as Anthropic and Cohere send them)."""
    return sse(data, event=data["type"])


async def wait_for_disconnect(request: web.Request) -> NoReturn:
    # aiohttp does not cancel handlers on disconnect and offers no event for it: poll.
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    raise ConnectionResetError


@contextlib.asynccontextmanager
async def streaming(
    request: web.Request, model: str, headers: dict[str, str]
) -> AsyncIterator[web.StreamResponse]:
    """A prepared streaming response, counted on the FakeUpstream while it is open; a client
    that goes away mid-answer is recorded (and `disconnected:{model}` set) before re-raising."""
    fake = request.app[FAKE]
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    fake.open_streams += 1
    fake.event(f"started:{model}").set()
    try:
        yield response
    except (ConnectionResetError, asyncio.CancelledError):
        fake.disconnects += 1
        fake.event(f"disconnected:{model}").set()
        raise
    finally:
        fake.open_streams -= 1
