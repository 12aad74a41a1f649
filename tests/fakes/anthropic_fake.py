"""A fake Anthropic Messages API speaking the documented wire format.

It validates each request strictly (path, auth, `anthropic-version`, JSON body
fields and ranges) and answers as api.anthropic.com does: named SSE events
`message_start` (input usage), `content_block_start`, `ping`,
`content_block_delta` (text_delta), `content_block_stop`, `message_delta`
(stop_reason, output usage), `message_stop`; errors as
`{"type":"error","error":{"type","message"},"request_id"}`. The model name picks
the scenario:

  ok (any other name)  normal stream            slow         one delta per 20 ms, 48 deltas
  hang                 headers, then nothing    429          rate_limit_error, retry-after: 2
  500                  api_error                529          overloaded_error
  401                  authentication_error     context      400 "prompt is too long"
  mid-stream-error     deltas, then an `error` event (overloaded_error)
  truncated            deltas, no message_stop  reset        deltas, then the socket is cut
  malformed            an event that is not JSON
  refusal              stop_reason "refusal"    thinking     a thinking block before the text
  cached               usage with cache_read_input_tokens
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.fakes.common import json_error, streaming, typed_sse, wait_for_disconnect
from tests.support.upstream import record

API_KEY = "sk-ant-test-fake-key-0123456789"
VERSIONS = {"2023-06-01", "2026-10-21"}  # documented, and what the current SDK sends
REPLY = ["Hello", " from", " the", " fake", " Claude", "."]
INPUT_TOKENS = 13
CACHE_READ_TOKENS = 5
MODELS = ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]
ALLOWED_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
}


def error_body(type_: str, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_fake"}
    )


def error_response(status: int, type_: str, message: str, **headers: str) -> web.Response:
    return json_error(status, error_body(type_, message), {"request-id": "req_fake", **headers})


def check_auth(headers: dict[str, str]) -> web.Response | None:
    if headers.get("x-api-key") != API_KEY and headers.get("authorization") != (
        f"Bearer {API_KEY}"
    ):
        return error_response(401, "authentication_error", "invalid x-api-key")
    version = headers.get("anthropic-version")
    if version is None:
        return error_response(400, "invalid_request_error", "anthropic-version: header is required")
    if version not in VERSIONS:
        return error_response(
            400, "invalid_request_error", f"anthropic-version: {version!r} is not a valid version"
        )
    return None


def _text_ok(content: object) -> bool:
    if isinstance(content, str):
        return bool(content)
    return (
        isinstance(content, list)
        and bool(content)
        and all(
            isinstance(b, dict)
            and b.get("type") == "text"
            and isinstance(b.get("text"), str)
            and b["text"]
            for b in content
        )
    )


def validate(headers: dict[str, str], body: object) -> str | None:
    """The first problem with a Messages request body, or None."""
    if "application/json" not in headers.get("content-type", ""):
        return "content-type must be application/json"
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if unknown := sorted(set(body) - ALLOWED_FIELDS):
        return f"{unknown[0]}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required (an integer >= 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"messages.{i}: expected exactly role and content"
        if m["role"] not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not _text_ok(m["content"]):
            return f"messages.{i}.content: text content blocks must be non-empty"
    if "system" in body and not _text_ok(body["system"]):
        return "system: must be a non-empty string or text blocks"
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and not (isinstance(value, int | float) and 0 <= value <= 1):
            return f"{name}: range: 0..1"
    stops = body.get("stop_sequences")
    if stops is not None and not (
        isinstance(stops, list) and all(isinstance(s, str) and s.strip() for s in stops)
    ):
        return "stop_sequences: each must contain non-whitespace"
    if body.get("stream") is not True:
        return "this fake only serves streaming requests"
    return None


async def messages(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    if (denied := check_auth(entry.headers)) is not None:
        return denied
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return error_response(400, "invalid_request_error", "There was an issue with your JSON")
    if problem := validate(entry.headers, body):
        return error_response(400, "invalid_request_error", problem)
    model = body["model"]
    if model == "429":
        return error_response(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            **{"retry-after": "2"},
        )
    if model == "500":
        return error_response(500, "api_error", "Internal server error")
    if model == "529":
        return error_response(529, "overloaded_error", "Overloaded")
    if model == "401":
        return error_response(401, "authentication_error", "invalid x-api-key")
    if model == "context":
        return error_response(
            400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"
        )
    return await _stream(request, body)


async def _stream(request: web.Request, body: dict) -> web.StreamResponse:
    model = body["model"]
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "request-id": "req_fake",
    }
    async with streaming(request, model, headers) as response:
        if model == "hang":
            await wait_for_disconnect(request)
        usage = {
            "input_tokens": INPUT_TOKENS,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": CACHE_READ_TOKENS if model == "cached" else 0,
            "output_tokens": 1,
        }
        await response.write(
            typed_sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake01",
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                    },
                }
            )
        )
        index = 0
        if model == "thinking":
            await response.write(
                typed_sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                    }
                )
            )
            for delta in (
                {"type": "thinking_delta", "thinking": "Let me think."},
                {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
            ):
                await response.write(
                    typed_sse({"type": "content_block_delta", "index": 0, "delta": delta})
                )
            await response.write(typed_sse({"type": "content_block_stop", "index": 0}))
            index = 1
        await response.write(
            typed_sse(
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                }
            )
        )
        await response.write(typed_sse({"type": "ping"}))
        reply = REPLY * 8 if model == "slow" else REPLY
        for i, word in enumerate(reply):
            if model == "slow":
                await asyncio.sleep(0.02)
            if model == "malformed" and i == 2:
                await response.write(b"event: content_block_delta\ndata: {not json\n\n")
                return response
            if model == "mid-stream-error" and i == 3:
                await response.write(
                    typed_sse(
                        {
                            "type": "error",
                            "error": {"type": "overloaded_error", "message": "Overloaded"},
                        }
                    )
                )
                return response
            if model == "reset" and i == 3:
                assert request.transport is not None
                request.transport.abort()
                return response
            await response.write(
                typed_sse(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": word},
                    }
                )
            )
        await response.write(typed_sse({"type": "content_block_stop", "index": index}))
        if model == "truncated":
            return response
        stop_reason, stop_sequence = "end_turn", None
        if body["max_tokens"] <= len(reply):
            stop_reason = "max_tokens"
        elif body.get("stop_sequences"):
            stop_reason, stop_sequence = "stop_sequence", body["stop_sequences"][0]
        elif model == "refusal":
            stop_reason = "refusal"
        await response.write(
            typed_sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": len(reply)},
                }
            )
        )
        await response.write(typed_sse({"type": "message_stop"}))
        return response


async def list_models(request: web.Request) -> web.Response:
    entry = await record(request)
    if (denied := check_auth(entry.headers)) is not None:
        return denied
    limit = int(request.query.get("limit", "20"))
    if not 1 <= limit <= 1000:
        return error_response(400, "invalid_request_error", "limit: range: 1..1000")
    start = 0
    if after := request.query.get("after_id"):
        start = MODELS.index(after) + 1
    page = MODELS[start : start + limit]
    return web.json_response(
        {
            "data": [
                {
                    "type": "model",
                    "id": m,
                    "display_name": m.replace("-", " ").title(),
                    "created_at": "2025-09-29T00:00:00Z",
                }
                for m in page
            ],
            "has_more": start + limit < len(MODELS),
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        },
        headers={"request-id": "req_fake"},
    )


def anthropic_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", list_models)
    return app
