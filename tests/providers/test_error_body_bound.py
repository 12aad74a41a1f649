"""An upstream error answer is read only up to a bound: a huge or endless body cannot
exhaust memory or hold the call open."""

from __future__ import annotations

import asyncio

from aiohttp import web

from llmproxy.server.errors import UpstreamUnavailableError
from llmproxy.server.providers.http_chat import MAX_ERROR_BODY
from tests.providers.chat_harness import chat, http_fixture, make
from tests.support.upstream import FAKE, serve_upstream

http = http_fixture(read_timeout_s=5)


async def endless_error(request: web.Request) -> web.StreamResponse:
    """HTTP 500 whose body never ends (until the client hangs up)."""
    fake = request.app[FAKE]
    response = web.StreamResponse(status=500, headers={"content-type": "application/json"})
    await response.prepare(request)
    await response.write(b'{"error": {"message": "')
    sent = 0
    try:
        while True:
            await response.write(b"x" * 65536)
            sent += 65536
            fake.open_streams = sent
    except (ConnectionResetError, asyncio.CancelledError):
        fake.disconnects += 1
        raise
    return response


def endless_app() -> web.Application:
    app = web.Application()
    for path in ("/v1/chat/completions", "/v1/models"):
        app.router.add_route("*", path, endless_error)
    return app


async def test_an_endless_error_body_is_cut_off_and_classified(http):
    async with serve_upstream(endless_app()) as upstream:
        provider = make("openai_compatible", upstream.base_url + "/v1", http, ("sk-x",))
        async with asyncio.timeout(5):
            try:
                async for _ in provider.stream(chat()):
                    raise AssertionError("an error answer must not stream events")
            except UpstreamUnavailableError as error:
                assert "HTTP 500" in error.message
                assert len(error.message) < 1000
            else:
                raise AssertionError("expected UpstreamUnavailableError")
        # Well under what the upstream would send: the reader stopped at the bound.
        assert upstream.open_streams < 64 * MAX_ERROR_BODY


async def test_an_endless_error_body_on_the_models_listing_is_cut_off(http):
    async with serve_upstream(endless_app()) as upstream:
        provider = make("openai_compatible", upstream.base_url + "/v1", http, ("sk-x",))
        async with asyncio.timeout(5):
            try:
                await provider.list_models()
            except UpstreamUnavailableError as error:
                assert "HTTP 500" in error.message
            else:
                raise AssertionError("expected UpstreamUnavailableError")
