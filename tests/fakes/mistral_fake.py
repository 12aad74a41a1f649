"""A fake Mistral chat completions server speaking its documented wire format.

Strict the way Mistral is: a Bearer key, and any field outside the documented
request schema (e.g. OpenAI's `seed`, `stream_options`, `max_completion_tokens`)
refused with a 422 whose `detail` list names it. Streams end with a chunk that
carries both `finish_reason` and `usage`, then `data: [DONE]`. Errors come in
Mistral's shapes: `{"object": "error", "message", "type", "param", "code"}`, its
gateway's bare `{"message": ...}`, and 422 `detail` lists. The model name picks
a scenario:

  mistral-small-latest (any other name)  normal stream    magistral   content as chunk lists
  429             rate_limited (code 1300)                  gateway-429 the gateway's bare body
  500             internal error          context     400 too large for the context
  mid-stream-error  chunks, then finish_reason "error"    truncated   chunks, no [DONE]
  malformed       a chunk that is not JSON
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web

from tests.fakes.common import json_error, sse, streaming
from tests.support.upstream import record

MISTRAL_KEY = "mistral-test-key-9876543210"
REPLY = ["Bonjour", " depuis", " le", " faux", " Mistral", "."]
PROMPT_TOKENS = 9
MODELS = ["mistral-small-latest", "magistral-medium-latest"]
# The documented ChatCompletionStreamRequest fields (see the mistralai SDK).
ALLOWED_FIELDS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "max_tokens",
    "stream",
    "stop",
    "random_seed",
    "metadata",
    "response_format",
    "tools",
    "tool_choice",
    "presence_penalty",
    "frequency_penalty",
    "n",
    "prediction",
    "parallel_tool_calls",
    "prompt_mode",
    "safe_prompt",
    "reasoning_effort",
}
ROLES = {"system", "user", "assistant", "tool"}


def mistral_error(status: int, message: object, type_: str, code: str | None) -> web.Response:
    body = {"object": "error", "message": message, "type": type_, "param": None, "code": code}
    return json_error(status, orjson.dumps(body))


def detail(kind: str, loc: list, msg: str, value: object = None) -> dict:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}


def validation_errors(body: dict) -> list[dict]:
    """Pydantic-style problems, as Mistral's 422 lists them."""
    problems = [
        detail("extra_forbidden", [k], "Extra inputs are not permitted", body[k])
        for k in sorted(set(body) - ALLOWED_FIELDS)
    ]
    if not isinstance(body.get("model"), str):
        problems.append(detail("missing", ["model"], "Field required"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append(detail("missing", ["messages"], "Field required"))
    else:
        for i, m in enumerate(messages):
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                problems.append(detail("union_tag_invalid", ["messages", i], "Bad message", m))
    for name in ("max_tokens", "random_seed"):
        if name in body and (not isinstance(body[name], int) or isinstance(body[name], bool)):
            problems.append(detail("int_type", [name], "Input should be a valid integer"))
    if "safe_prompt" in body and not isinstance(body["safe_prompt"], bool):
        problems.append(detail("bool_type", ["safe_prompt"], "Input should be a valid boolean"))
    return problems


def chunk(model: str, delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    body: dict = {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return sse(body)


def scenario_error(model: str) -> web.Response | None:
    if model == "429":
        return mistral_error(429, "Rate limit exceeded", "rate_limited", "1300")
    if model == "gateway-429":
        return json_error(429, b'{"message":"Requests rate limit exceeded"}')
    if model == "500":
        return mistral_error(500, "Internal server error", "internal_server_error", "3000")
    if model == "context":
        return mistral_error(
            400,
            "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 "
            "maximum context length",
            "invalid_request_error",
            "3051",
        )
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    if entry.headers.get("authorization") != f"Bearer {MISTRAL_KEY}":
        return json_error(401, b'{"message":"Unauthorized","request_id":"5e1b0c9b2f6d"}')
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return mistral_error(400, "Invalid JSON body", "invalid_request_error", None)
    if problems := validation_errors(body):
        return mistral_error(422, {"detail": problems}, "invalid_request_error", None)
    if body.get("stream") is not True:
        return mistral_error(400, "this fake only streams", "invalid_request_error", None)
    model = body["model"]
    if (error := scenario_error(model)) is not None:
        return error
    headers = {"content-type": "text/event-stream; charset=utf-8"}
    async with streaming(request, model, headers) as response:
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        for i, word in enumerate(REPLY):
            if model == "malformed" and i == 2:
                await response.write(b"data: {not json\n\n")
                return response
            if model == "mid-stream-error" and i == 3:
                await response.write(chunk(model, {"content": ""}, "error"))
                return response
            if model == "magistral" and i == 0:
                thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "Hmm."}]}
                await response.write(chunk(model, {"content": [thinking]}))
            content = [{"type": "text", "text": word}] if model == "magistral" else word
            await response.write(chunk(model, {"content": content}))
        if model == "truncated":
            return response
        limit = body.get("max_tokens")
        finish = "length" if limit is not None and limit <= len(REPLY) else "stop"
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "total_tokens": PROMPT_TOKENS + len(REPLY),
            "completion_tokens": len(REPLY),
        }
        await response.write(chunk(model, {"content": ""}, finish, usage))
        await response.write(b"data: [DONE]\n\n")
        return response


async def models(request: web.Request) -> web.Response:
    entry = await record(request)
    if entry.headers.get("authorization") != f"Bearer {MISTRAL_KEY}":
        return json_error(401, b'{"message":"Unauthorized","request_id":"5e1b0c9b2f6d"}')
    capabilities = {"completion_chat": True, "function_calling": True, "vision": False}
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": 1741570283,
                    "owned_by": "mistralai",
                    "capabilities": capabilities,
                    "max_context_length": 131072,
                    "type": "base",
                }
                for m in MODELS
            ],
        }
    )


def mistral_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app
