"""A body that cannot be decoded (broken gzip) is the upstream's protocol error, so the
executor counts it against the deployment and falls back, instead of an INTERNAL error."""

from __future__ import annotations

import pytest
from aiohttp import web

from llmproxy.server.errors import UpstreamProtocolError
from tests.providers.chat_harness import chat, http_fixture, make
from tests.support.upstream import serve_upstream

http = http_fixture(read_timeout_s=2)


async def broken_gzip(request: web.Request) -> web.StreamResponse:
    await request.read()
    status = int(request.query.get("status", "200"))
    response = web.StreamResponse(
        status=status,
        headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
    )
    await response.prepare(request)
    await response.write(b"this is not gzip at all" * 10)
    await response.write_eof()
    return response


@pytest.mark.parametrize("status", [200, 500])
async def test_a_body_that_cannot_be_decoded_is_a_protocol_error(http, status):
    app = web.Application()
    app.router.add_route("*", "/v1/chat/completions", broken_gzip)
    app.router.add_route("*", "/v1/models", broken_gzip)
    async with serve_upstream(app) as upstream:
        base = f"{upstream.base_url}/v1"
        provider = make("openai_compatible", base, http, ("sk-x",))
        provider.url = lambda request: f"{base}/chat/completions?status={status}"  # type: ignore[method-assign]
        with pytest.raises(UpstreamProtocolError):
            async for _ in provider.stream(chat()):
                pass
        with pytest.raises(UpstreamProtocolError):
            await provider.list_models()
