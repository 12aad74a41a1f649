"""A fake OpenAI Chat Completions server speaking the documented wire format.

It validates each request strictly (path, auth header, JSON body fields) and
answers as api.openai.com does: `data: {chunk}\\n\\n` SSE frames, a usage-only
chunk with empty `choices` when `stream_options.include_usage` is set, then
`data: [DONE]`. The requested model name picks a scenario:

  ok (any other name)   normal stream          slow       one chunk per 50 ms, 40 chunks
  hang                  headers, then nothing  429        rate limited, retry-after: 2
  500 / 503             server error           401        invalid key
  context               400 context_length_exceeded
  mid-stream-error      chunks, then an error event      truncated  chunks, no [DONE]
  malformed             a chunk that is not JSON          no-usage   no usage chunk
"""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web

from tests.support.upstream import FAKE, record

API_KEY = "sk-test-fake-key-0123456789"
REPLY = ["Hello", " from", " the", " fake", " upstream", "."]
PROMPT_TOKENS = 11
ALLOWED_FIELDS = {
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "max_tokens",
    "max_completion_tokens",
    "top_p",
    "stop",
    "seed",
    "n",
    "user",
}
ROLES = {"system", "user", "assistant", "developer"}


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake123",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def validate(headers: dict[str, str], body: dict) -> str | None:
    """The first problem with a request, or None."""
    if headers.get("authorization") != f"Bearer {API_KEY}":
        return "auth"
    if "application/json" not in headers.get("content-type", ""):
        return "content-type must be application/json"
    unknown = set(body) - ALLOWED_FIELDS
    if unknown:
        return f"unknown fields {sorted(unknown)}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list"
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"bad message {m!r}"
    if body.get("stream") is not True:
        return "this fake only serves streaming requests"
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    fake = request.app[FAKE]
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return web.Response(
            status=400, body=error_body("We could not parse the JSON body", "invalid_request_error")
        )
    problem = validate(entry.headers, body)
    if problem == "auth":
        return web.Response(
            status=401,
            content_type="application/json",
            body=error_body(
                "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ),
        )
    if problem:
        return web.Response(
            status=400,
            content_type="application/json",
            body=error_body(problem, "invalid_request_error"),
        )
    model = body["model"]
    if model == "429":
        return web.Response(
            status=429,
            headers={"retry-after": "2"},
            content_type="application/json",
            body=error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
        )
    if model in ("500", "503"):
        return web.Response(
            status=int(model),
            content_type="application/json",
            body=error_body("The server had an error", "server_error"),
        )
    if model == "401":
        return web.Response(
            status=401,
            content_type="application/json",
            body=error_body(
                "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ),
        )
    if model == "context":
        return web.Response(
            status=400,
            content_type="application/json",
            body=error_body(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
        )

    response = web.StreamResponse(
        headers={"content-type": "text/event-stream", "cache-control": "no-cache"}
    )
    await response.prepare(request)
    fake.open_streams += 1
    fake.event(f"started:{model}").set()
    try:
        if model == "hang":
            # aiohttp does not cancel handlers on disconnect, so watch the socket.
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.02)
            raise ConnectionResetError
        reply = REPLY * 8 if model == "slow" else REPLY
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        for i, word in enumerate(reply):
            if model == "slow":
                await asyncio.sleep(0.05)
            if model == "malformed" and i == 2:
                await response.write(b"data: {not json\n\n")
                return response
            if model == "mid-stream-error" and i == 3:
                err = error_body("The server had an error while processing", "server_error")
                await response.write(b"data: " + err + b"\n\n")
                return response
            await response.write(chunk(model, {"content": word}))
        if model == "truncated":
            return response
        max_tokens = body.get("max_tokens")
        finish = "length" if max_tokens is not None and max_tokens <= len(reply) else "stop"
        await response.write(chunk(model, {}, finish))
        if body.get("stream_options", {}).get("include_usage") and model != "no-usage":
            await response.write(
                chunk(
                    model,
                    {},
                    usage={
                        "prompt_tokens": PROMPT_TOKENS,
                        "completion_tokens": len(reply),
                        "total_tokens": PROMPT_TOKENS + len(reply),
                        "prompt_tokens_details": {"cached_tokens": 0},
                    },
                )
            )
        await response.write(b"data: [DONE]\n\n")
        return response
    except (ConnectionResetError, asyncio.CancelledError):
        fake.disconnects += 1
        fake.event(f"disconnected:{model}").set()
        raise
    finally:
        fake.open_streams -= 1


async def models(request: web.Request) -> web.Response:
    entry = await record(request)
    if entry.headers.get("authorization") != f"Bearer {API_KEY}":
        return web.Response(
            status=401,
            content_type="application/json",
            body=error_body(
                "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
            ),
        )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": "gpt-4o-mini",
                    "object": "model",
                    "created": 1721172741,
                    "owned_by": "system",
                },
            ],
        }
    )


def openai_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app
