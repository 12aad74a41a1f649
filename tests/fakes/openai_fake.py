"""A fake OpenAI Chat Completions server speaking the documented wire format.

It validates each request strictly (path, auth header, JSON body fields and
types) and answers as api.openai.com does: `data: {chunk}\\n\\n` SSE frames, a
usage-only chunk with empty `choices` when `stream_options.include_usage` is set,
then `data: [DONE]`. The requested model name picks a scenario:

  ok (any other name)   normal stream          slow        one chunk per 50 ms, 48 chunks
  hang                  headers, then nothing  stall       three chunks, then nothing
  429                   rate limited, retry-after: 2     rate-hint   429, wait only in message
  quota                 429 insufficient_quota           500 / 503   server error
  401                   invalid key            bad-gateway 502 with an HTML body
  context               400 context_length_exceeded      content-filter  finish content_filter
  mid-stream-error      chunks, then an error event      truncated   chunks, no [DONE]
  malformed             a chunk that is not JSON          no-usage    no usage chunk
  reset                 chunks, then the connection is aborted
  keepalive             SSE comment lines between chunks (as OpenRouter sends)
  o1* / o3* / o4* / gpt-5*  reasoning models: `max_tokens` refused as OpenAI does

`openai_app(...)` options make the same fake stand in for OpenAI-compatible
servers: several keys with their own behaviour, a server that rejects
`stream_options`, required extra headers, a slow models endpoint.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from tests.fakes.common import json_error, sse, streaming, wait_for_disconnect
from tests.support.upstream import record

API_KEY = "sk-test-fake-key-0123456789"
REPLY = ["Hello", " from", " the", " fake", " upstream", "."]
PROMPT_TOKENS = 11
CACHED_TOKENS = 0
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
REASONING = re.compile(r"^(o\d|gpt-5)")
MODELS = ["gpt-4o-mini", "o3-mini"]


@dataclass
class FakeConfig:
    """How this instance behaves beyond the model-name scenarios."""

    # key -> "ok" | "401" | "429" | "quota"; any other key is refused as invalid.
    keys: dict[str, str] = field(default_factory=lambda: {API_KEY: "ok"})
    # Like servers that refuse `stream_options` (400), so usage must come without it.
    reject_stream_options: bool = False
    # Headers every request must carry, e.g. OpenRouter's HTTP-Referer / X-Title.
    required_headers: dict[str, str] = field(default_factory=dict)
    models_delay_s: float = 0.0
    # Usage on the finish chunk, as several compatible servers send it without stream_options.
    usage_on_finish: bool = False
    # Local servers (vLLM, LM Studio) often run without any key.
    auth_required: bool = True


CONFIG = web.AppKey("openai_fake_config", FakeConfig)


def error_body(
    message: str, type_: str | None, code: str | None = None, param: str | None = None
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
        if usage is not None and finish is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return sse(body)


def usage_of(completion_tokens: int) -> dict:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion_tokens,
        "total_tokens": PROMPT_TOKENS + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate(headers: dict[str, str], body: dict, config: FakeConfig | None = None) -> str | None:
    """The first problem with a request, or None ("auth" when the key is unknown)."""
    config = config or FakeConfig()
    if config.auth_required and not authorized(headers, config):
        return "auth"
    return validate_body(headers, body, config)


def authorized(headers: dict[str, str], config: FakeConfig) -> bool:
    auth = headers.get("authorization", "")
    return auth.startswith("Bearer ") and auth[len("Bearer ") :] in config.keys


def validate_body(headers: dict[str, str], body: dict, config: FakeConfig) -> str | None:
    """The first problem with a request's headers (other than auth) and body, or None."""
    for name, value in config.required_headers.items():
        if headers.get(name) != value:
            return f"missing header {name}"
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
        if set(m) - {"role", "content", "name"}:
            return f"bad message fields {sorted(m)}"
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"bad message {m!r}"
    if body.get("stream") is not True:
        return "this fake only serves streaming requests"
    if "stream_options" in body:
        if config.reject_stream_options:
            return "stream_options is not supported"
        if body["stream_options"] != {"include_usage": True}:
            return f"bad stream_options {body['stream_options']!r}"
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        if name in body and (not _number(body[name]) or not low <= body[name] <= high):
            return f"bad {name}"
    for name in ("max_tokens", "max_completion_tokens", "seed"):
        if name in body and (not isinstance(body[name], int) or isinstance(body[name], bool)):
            return f"{name} must be an integer"
    stop = body.get("stop")
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)
    ):
        return "stop must be a list of up to 4 strings"
    return None


def key_refusal(headers: dict[str, str], config: FakeConfig) -> web.Response | None:
    """What a known key with a bad standing gets instead of an answer."""
    key = headers.get("authorization", "")[len("Bearer ") :]
    behaviour = config.keys.get(key)
    if behaviour == "401":
        return json_error(
            401,
            error_body(
                "Incorrect API key provided: sk-test-****. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            ),
        )
    if behaviour == "429":
        return json_error(
            429,
            error_body("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            {"retry-after": "7"},
        )
    if behaviour == "quota":
        return quota_exceeded()
    return None


def quota_exceeded() -> web.Response:
    return json_error(
        429,
        error_body(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
    )


def unauthorized() -> web.Response:
    return json_error(
        401,
        error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    )


def scenario_error(model: str) -> web.Response | None:
    """Answers that fail before any stream starts."""
    if model == "429":
        return json_error(
            429,
            error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
            {"retry-after": "2"},
        )
    if model == "rate-hint":
        return json_error(
            429,
            error_body(
                "Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000, "
                "Used 199980, Requested 320. Please try again in 1.5s.",
                "tokens",
                "rate_limit_exceeded",
            ),
            {"x-ratelimit-reset-tokens": "1.5s", "x-ratelimit-reset-requests": "120ms"},
        )
    if model == "quota":
        return quota_exceeded()
    if model in ("500", "503"):
        return json_error(int(model), error_body("The server had an error", "server_error"))
    if model == "bad-gateway":
        return web.Response(
            status=502,
            content_type="text/html",
            text="<html><head><title>502 Bad Gateway</title></head></html>",
        )
    if model == "401":
        return unauthorized()
    if model == "context":
        return json_error(
            400,
            error_body(
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
                "messages",
            ),
        )
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    config = request.app.get(CONFIG) or FakeConfig()
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return json_error(
            400, error_body("We could not parse the JSON body", "invalid_request_error")
        )
    problem = validate(entry.headers, body, config)
    if problem == "auth":
        return unauthorized()
    if problem:
        return json_error(400, error_body(problem, "invalid_request_error"))
    if (refusal := key_refusal(entry.headers, config)) is not None:
        return refusal
    model = body["model"]
    if REASONING.match(model) and "max_tokens" in body:
        return json_error(
            400,
            error_body(
                "Unsupported parameter: 'max_tokens' is not supported with this model. "
                "Use 'max_completion_tokens' instead.",
                "invalid_request_error",
                "unsupported_parameter",
                "max_tokens",
            ),
        )
    if (error := scenario_error(model)) is not None:
        return error
    return await stream_answer(request, body, config)


async def stream_answer(request, body, config: FakeConfig) -> web.StreamResponse:
    model = body["model"]
    headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
    async with streaming(request, model, headers) as response:
        if model == "hang":
            await wait_for_disconnect(request)
        reply = REPLY * 8 if model == "slow" else REPLY
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        for i, word in enumerate(reply):
            if model == "slow":
                await asyncio.sleep(0.05)
            if i == 3 and model == "stall":
                await wait_for_disconnect(request)
            if i == 3 and model == "reset":
                assert request.transport is not None
                request.transport.abort()
                return response
            if model == "malformed" and i == 2:
                await response.write(b"data: {not json\n\n")
                return response
            if model == "mid-stream-error" and i == 3:
                err = error_body("The server had an error while processing", "server_error")
                await response.write(b"data: " + err + b"\n\n")
                return response
            if model == "keepalive":
                # OpenRouter-style SSE comments between chunks, CRLF line endings.
                await response.write(b": OPENROUTER PROCESSING\r\n\r\n")
            await response.write(chunk(model, {"content": word}))
        if model == "truncated":
            return response
        limit = body.get("max_tokens", body.get("max_completion_tokens"))
        finish = "length" if limit is not None and limit <= len(reply) else "stop"
        if model == "content-filter":
            finish = "content_filter"
        wants_usage = body.get("stream_options", {}).get("include_usage")
        if config.usage_on_finish and model != "no-usage":
            await response.write(chunk(model, {}, finish, usage=usage_of(len(reply))))
        else:
            await response.write(chunk(model, {}, finish))
            if wants_usage and model != "no-usage":
                await response.write(chunk(model, {}, usage=usage_of(len(reply))))
        await response.write(b"data: [DONE]\n\n")
        return response


async def models(request: web.Request) -> web.Response:
    entry = await record(request)
    config = request.app.get(CONFIG) or FakeConfig()
    if config.models_delay_s:
        # Slow, but give up as soon as the client does (a health check timing out).
        deadline = time.monotonic() + config.models_delay_s
        while time.monotonic() < deadline:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError
            await asyncio.sleep(0.02)
    if config.auth_required and not authorized(entry.headers, config):
        return unauthorized()
    if (refusal := key_refusal(entry.headers, config)) is not None:
        return refusal
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1721172741, "owned_by": "system"}
                for m in MODELS
            ],
        }
    )


def openai_app(config: FakeConfig | None = None) -> web.Application:
    app = web.Application()
    if config is not None:
        app[CONFIG] = config
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    return app
