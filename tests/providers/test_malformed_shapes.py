"""Well-formed JSON of the wrong shape (a null choice, a string where an object belongs)
is the upstream breaking the protocol: UpstreamProtocolError (counted, falls back), never
a bare AttributeError or TypeError that the executor would take for a cancellation."""

from __future__ import annotations

import pytest
from aiohttp import web

from llmproxy.server.errors import UpstreamError, UpstreamProtocolError
from tests.providers.chat_harness import chat, http_fixture, make
from tests.support.upstream import serve_upstream

http = http_fixture(read_timeout_s=2)

CHUNKS = {
    "null-choice": b'data: {"choices":[null]}\n\n',
    "string-delta": b'data: {"choices":[{"index":0,"delta":"x"}]}\n\n',
    "string-usage": b'data: {"choices":[],"usage":"lots"}\n\ndata: [DONE]\n\n',
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = body["model"]
    if model == "error-list-detail":
        return web.json_response({"detail": [{"loc": 5, "msg": "bad"}]}, status=422)
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(CHUNKS[model])
    await response.write_eof()
    return response


@pytest.mark.parametrize("model", [*CHUNKS, "error-list-detail"])
async def test_a_wrongly_shaped_answer_is_an_upstream_error(http, model):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    async with serve_upstream(app) as upstream:
        provider = make("openai_compatible", upstream.base_url + "/v1", http, ("sk-x",))
        expected = UpstreamError if model.startswith("error") else UpstreamProtocolError
        with pytest.raises(expected):
            async for _ in provider.stream(chat(model)):
                pass
