"""A fake Ollama server speaking the native `/api/chat` wire format.

Newline-delimited JSON (`application/x-ndjson`): one `{"message": {...}, "done":
false}` object per token, then a `done: true` line with `done_reason` and the
eval counts. Errors are `{"error": "..."}`, with a status before the stream
starts and as a line inside it after. Strict about the request: known top-level
fields, Ollama's `options` names (never OpenAI's), roles. With `ollama_app(token=...)`
it demands a Bearer token as ollama.com does. The model name picks a scenario:

  llama3.2 (any name in MODELS)  normal stream     busy        503 server busy
  429            rate limited, retry-after: 3      500         internal error
  mid-stream-error  lines, then an error line      truncated   lines, no done line
  malformed      a line that is not JSON           any other name   404 model not found
"""

from __future__ import annotations

import orjson
from aiohttp import web

from tests.fakes.common import json_error, streaming
from tests.support.upstream import record

REPLY = ["Hi", " from", " the", " fake", " llama", "."]
PROMPT_TOKENS = 26
MODELS = ["llama3.2:latest", "qwen3:8b"]
SCENARIOS = {"llama3.2", "429", "busy", "500", "mid-stream-error", "truncated", "malformed"}
FIELDS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "num_predict": (int,),
    "num_ctx": (int,),
    "seed": (int,),
    "stop": (list,),
    "repeat_penalty": (int, float),
}
ROLES = {"system", "user", "assistant", "tool"}
TOKEN = web.AppKey("ollama_token", str)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_error(status, orjson.dumps({"error": message}), headers)


def line(obj: dict) -> bytes:
    return orjson.dumps(obj) + b"\n"


def problem_with(body: dict) -> str | None:
    if unknown := set(body) - FIELDS:
        return f"json: unknown field {sorted(unknown)[0]!r}"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages must be a list"
    for m in messages:
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"invalid message {m!r}"
    options = body.get("options", {})
    if not isinstance(options, dict):
        return "options must be an object"
    for key, value in options.items():
        kinds = OPTION_TYPES.get(key)
        if kinds is None:
            return f"invalid option provided: {key}"
        if not isinstance(value, kinds) or isinstance(value, bool):
            return f"option {key} has the wrong type"
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream must be a boolean"
    return None


async def chat(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    token = request.app.get(TOKEN)
    if token is not None and entry.headers.get("authorization") != f"Bearer {token}":
        return error(401, "unauthorized")
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return error(400, "invalid character 'x' looking for beginning of value")
    if (problem := problem_with(body)) is not None:
        return error(400, problem)
    model = body["model"]
    if model not in SCENARIOS and model not in MODELS:
        return error(404, f'model "{model}" not found, try pulling it first')
    if model == "429":
        return error(429, "too many requests", {"retry-after": "3"})
    if model == "busy":
        return error(503, "server busy, please try again.  maximum pending requests exceeded")
    if model == "500":
        return error(500, "llama runner process has terminated: exit status 2")
    if body.get("stream") is False:
        return error(400, "this fake only streams")
    return await stream_answer(request, body)


async def stream_answer(request: web.Request, body: dict) -> web.StreamResponse:
    model = body["model"]
    created = "2025-01-10T12:00:00.000000Z"
    async with streaming(request, model, {"content-type": "application/x-ndjson"}) as response:
        for i, word in enumerate(REPLY):
            if model == "malformed" and i == 2:
                await response.write(b'{"model": not json\n')
                return response
            if model == "mid-stream-error" and i == 3:
                await response.write(line({"error": "an error was encountered while running"}))
                return response
            message = {"role": "assistant", "content": word}
            await response.write(
                line({"model": model, "created_at": created, "message": message, "done": False})
            )
        if model == "truncated":
            return response
        limit = body.get("options", {}).get("num_predict")
        await response.write(
            line(
                {
                    "model": model,
                    "created_at": created,
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "length"
                    if limit is not None and limit <= len(REPLY)
                    else "stop",
                    "done": True,
                    "total_duration": 4883583458,
                    "load_duration": 1334875,
                    "prompt_eval_count": PROMPT_TOKENS,
                    "prompt_eval_duration": 342546000,
                    "eval_count": len(REPLY),
                    "eval_duration": 4535599000,
                }
            )
        )
        return response


async def tags(request: web.Request) -> web.Response:
    entry = await record(request)
    token = request.app.get(TOKEN)
    if token is not None and entry.headers.get("authorization") != f"Bearer {token}":
        return error(401, "unauthorized")
    details = {
        "parent_model": "",
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "3.2B",
        "quantization_level": "Q4_K_M",
    }
    return web.json_response(
        {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2025-01-10T12:00:00.000000+00:00",
                    "size": 2019393189,
                    "digest": "a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72",
                    "details": details,
                }
                for m in MODELS
            ]
        }
    )


def ollama_app(token: str | None = None) -> web.Application:
    app = web.Application()
    if token is not None:
        app[TOKEN] = token
    app.router.add_post("/api/chat", chat)
    app.router.add_get("/api/tags", tags)
    return app
