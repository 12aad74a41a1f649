"""A fake Cohere v2 Chat API speaking the documented wire format.

It validates each request strictly (path, `Authorization: Bearer`, JSON body
fields and ranges) and answers as api.cohere.com does: SSE events named by
their `type` — `message-start`, `content-start`, `content-delta`
(`delta.message.content.text`), `content-end`, `message-end` (`finish_reason`,
`usage.billed_units` and `usage.tokens`) — then `data: [DONE]`; errors as
`{"id","message"}`. The model name picks the scenario:

  ok (any other name)  normal stream            slow       one delta per 20 ms, 48 deltas
  hang                 headers, then nothing    429        too many requests, retry-after: 2
  500                  internal error           401        invalid api token
  498                  invalid token (Cohere's own status)
  context              400 too many tokens      mid-stream-error  message-end with ERROR
  truncated            deltas, no message-end   reset      deltas, then the socket is cut
  malformed            an event that is not JSON
  thinking             a thinking block before the text
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.fakes.common import json_error, streaming, typed_sse, wait_for_disconnect
from tests.support.upstream import record

API_KEY = "co-test-fake-key-0123456789"
REPLY = ["Hello", " from", " the", " fake", " Command", "."]
BILLED_INPUT = 7
TEMPLATE_TOKENS = 196  # tokens.input_tokens also counts Cohere's prompt template
MODELS = ["command-a-03-2025", "command-r7b-12-2024", "embed-v4.0"]
ALLOWED_FIELDS = {
    "model",
    "messages",
    "stream",
    "tools",
    "strict_tools",
    "documents",
    "citation_options",
    "response_format",
    "safety_mode",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "k",
    "p",
    "logprobs",
    "tool_choice",
    "thinking",
    "priority",
}
ROLES = {"system", "user", "assistant", "tool"}


def error_response(status: int, message: str, **headers: str) -> web.Response:
    return json_error(status, orjson.dumps({"id": "a5b8f4b2-fake", "message": message}), headers)


def _content_ok(content: object) -> bool:
    if isinstance(content, str):
        return bool(content)
    return (
        isinstance(content, list)
        and bool(content)
        and all(
            isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
            for c in content
        )
    )


def validate(headers: dict[str, str], body: object) -> str | None:
    """The first problem with a v2 chat request, or None."""
    if "application/json" not in headers.get("content-type", ""):
        return "content-type must be application/json"
    if not isinstance(body, dict):
        return "invalid request: body must be a JSON object"
    if unknown := sorted(set(body) - ALLOWED_FIELDS):
        return f"invalid request: unknown field {unknown[0]!r}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "invalid request: model must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "invalid request: messages cannot be empty"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"invalid request: messages[{i}].role must be one of {sorted(ROLES)}"
        if not _content_ok(m.get("content")):
            return f"invalid request: messages[{i}].content must be non-empty"
    p = body.get("p")
    if p is not None and not 0.01 <= p <= 0.99:
        return "invalid request: p must be between 0.01 and 0.99"
    temperature = body.get("temperature")
    if temperature is not None and temperature < 0:
        return "invalid request: temperature must be non-negative"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "invalid request: max_tokens must be positive"
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
        return "invalid request: stop_sequences can have at most 5 entries"
    if body.get("stream") is not True:
        return "this fake only serves streaming requests"
    return None


def authorised(headers: dict[str, str]) -> bool:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token == API_KEY


async def chat(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    if not authorised(entry.headers):
        return error_response(401, "invalid api token")
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return error_response(400, "invalid request: body is not valid JSON")
    if problem := validate(entry.headers, body):
        return error_response(400, problem)
    model = body["model"]
    if model == "429":
        return error_response(
            429,
            "You are using a Trial key, which is limited to 10 API calls / minute.",
            **{"retry-after": "2"},
        )
    if model == "500":
        return error_response(
            500, "internal server error, this has been reported to our developers"
        )
    if model == "401":
        return error_response(401, "invalid api token")
    if model == "498":
        return error_response(498, "invalid api token")
    if model == "context":
        return error_response(
            400,
            "too many tokens: total number of tokens in the prompt cannot exceed 4081"
            " - received 4292. Try using a shorter preamble or less chat history.",
        )
    return await _stream(request, body)


async def _stream(request: web.Request, body: dict) -> web.StreamResponse:
    model = body["model"]
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
    async with streaming(request, model, headers) as response:
        if model == "hang":
            await wait_for_disconnect(request)
        start = {
            "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
            "type": "message-start",
            "delta": {
                "message": {
                    "role": "assistant",
                    "content": [],
                    "tool_plan": "",
                    "tool_calls": [],
                    "citations": [],
                }
            },
        }
        await response.write(typed_sse(start))
        index = 0
        if model == "thinking":
            for data in (
                {
                    "type": "content-start",
                    "index": 0,
                    "delta": {"message": {"content": {"type": "thinking", "thinking": ""}}},
                },
                {
                    "type": "content-delta",
                    "index": 0,
                    "delta": {"message": {"content": {"thinking": "Greet."}}},
                },
                {"type": "content-end", "index": 0},
            ):
                await response.write(typed_sse(data))
            index = 1
        await response.write(
            typed_sse(
                {
                    "type": "content-start",
                    "index": index,
                    "delta": {"message": {"content": {"type": "text", "text": ""}}},
                }
            )
        )
        reply = REPLY * 8 if model == "slow" else REPLY
        for i, word in enumerate(reply):
            if model == "slow":
                await asyncio.sleep(0.02)
            if model == "malformed" and i == 2:
                await response.write(b"event: content-delta\ndata: {not json\n\n")
                return response
            if model == "reset" and i == 3:
                assert request.transport is not None
                request.transport.abort()
                return response
            if model == "mid-stream-error" and i == 3:
                await response.write(
                    typed_sse(
                        {
                            "type": "message-end",
                            "delta": {
                                "error": "internal error during generation",
                                "finish_reason": "ERROR",
                            },
                        }
                    )
                )
                await response.write(b"data: [DONE]\n\n")
                return response
            await response.write(
                typed_sse(
                    {
                        "type": "content-delta",
                        "index": index,
                        "delta": {"message": {"content": {"text": word}}},
                    }
                )
            )
        await response.write(typed_sse({"type": "content-end", "index": index}))
        if model == "truncated":
            return response
        max_tokens = body.get("max_tokens")
        finish = "COMPLETE"
        if max_tokens is not None and max_tokens <= len(reply):
            finish = "MAX_TOKENS"
        elif body.get("stop_sequences"):
            finish = "STOP_SEQUENCE"
        output = len(reply)
        usage = {
            "billed_units": {"input_tokens": BILLED_INPUT, "output_tokens": output},
            "tokens": {"input_tokens": BILLED_INPUT + TEMPLATE_TOKENS, "output_tokens": output + 2},
            "cached_tokens": 0,
        }
        await response.write(
            typed_sse({"type": "message-end", "delta": {"finish_reason": finish, "usage": usage}})
        )
        await response.write(b"data: [DONE]\n\n")
        return response


async def list_models(request: web.Request) -> web.Response:
    entry = await record(request)
    if not authorised(entry.headers):
        return error_response(401, "invalid api token")
    size = int(entry.query.get("page_size", "20"))
    if not 1 <= size <= 1000:
        return error_response(400, "invalid request: page_size must be between 1 and 1000")
    models = MODELS
    if entry.query.get("endpoint") == "chat":
        models = [m for m in MODELS if not m.startswith("embed")]
    start = int(entry.query.get("page_token") or 0)
    page = models[start : start + size]
    body: dict = {
        "models": [
            {
                "name": m,
                "endpoints": ["embed"] if m.startswith("embed") else ["chat"],
                "finetuned": False,
                "context_length": 256000,
                "is_deprecated": False,
            }
            for m in page
        ]
    }
    if start + size < len(models):
        body["next_page_token"] = str(start + size)
    return web.json_response(body)


def cohere_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v2/chat", chat)
    app.router.add_get("/v1/models", list_models)
    return app
