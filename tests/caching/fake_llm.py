"""A fake OpenAI-compatible upstream whose answers show which call produced them.

The reply names the call number and echoes the prompt, so a test can tell a cached
answer (same number) from a fresh one. The model name picks the scenario:

  ok (any other name)   normal stream                 gated    waits for the `release` event
  content-filter        finish_reason content_filter  length   finish_reason length
  truncated             chunks, then the stream ends  500      server error
  slow                  one chunk per 30 ms           gated-500  waits for `release`, then 500
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.support.upstream import FAKE, record

PROMPT_TOKENS = 7


def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body: dict = {"id": "chatcmpl-cache", "object": "chat.completion.chunk", "model": model}
    body["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def error_body(message: str, type_: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "code": None}})


def reply_words(n: int, prompt: str) -> list[str]:
    return ["Answer", f" #{n}", " to:", f" {prompt}"]


def reply_text(n: int, prompt: str) -> str:
    return "".join(reply_words(n, prompt))


async def _closed(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def chat_completions(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    fake = request.app[FAKE]
    body = orjson.loads(entry.body)
    model = body["model"]
    n = len(fake.requests)
    if model == "gated-500":
        fake.event(f"started:{model}").set()
        release = fake.event("release")
        while not release.is_set():
            if await _closed(request):
                break
            await asyncio.sleep(0.01)
    if model in ("500", "gated-500"):
        return web.Response(
            status=500,
            content_type="application/json",
            body=error_body("The server had an error", "server_error"),
        )
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    fake.open_streams += 1
    fake.event(f"started:{model}").set()
    try:
        release = fake.event("release")
        while model == "gated" and not release.is_set():
            if await _closed(request):
                raise ConnectionResetError
            await asyncio.sleep(0.01)
        words = reply_words(n, body["messages"][-1]["content"])
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        for i, word in enumerate(words):
            if model in ("slow", "gated"):
                await asyncio.sleep(0.03)
            if model == "truncated" and i == 2:
                return response
            await response.write(chunk(model, {"content": word}))
        finish = {"content-filter": "content_filter", "length": "length"}.get(model, "stop")
        await response.write(chunk(model, {}, finish))
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(words),
            "total_tokens": PROMPT_TOKENS + len(words),
        }
        await response.write(chunk(model, {}, usage=usage))
        await response.write(b"data: [DONE]\n\n")
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        fake.disconnects += 1
        fake.event(f"disconnected:{model}").set()
        raise
    finally:
        fake.open_streams -= 1


def fake_llm_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return app
