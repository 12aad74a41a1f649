"""A fake Gemini API (generativelanguage) speaking the documented wire format.

It validates each request strictly (path and version, `alt=sse`, the
`x-goog-api-key` header, GenerateContentRequest fields in the API's camelCase)
and answers as the real service does: `data: {GenerateContentResponse}` SSE
frames separated by CRLF CRLF, cumulative `usageMetadata`, `finishReason` on the
last chunk and no other terminator; errors as `{"error":{"code","message",
"status","details"}}`, a bad key as 400 API_KEY_INVALID, a 429 with a RetryInfo
detail. `:generateContent` answers the same content in one JSON object. The model
name picks the scenario:

  ok (any other name)  normal stream            slow          one chunk per 20 ms, 48 chunks
  hang                 headers, then nothing    usage-at-end  usageMetadata only on the last chunk
  429                  RESOURCE_EXHAUSTED, retryDelay 2s      500  INTERNAL
  503                  UNAVAILABLE "overloaded" 401           400 API_KEY_INVALID (as a bad key)
  context              400 input token count exceeds the maximum
  mid-stream-error     chunks, then an error object           truncated  chunks, no finishReason
  reset                chunks, then the socket is cut         malformed  a chunk that is not JSON
  safety               chunks, then finishReason SAFETY       blocked    promptFeedback.blockReason
  thinking             a thought part before the text, thoughtsTokenCount in usage
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from tests.fakes.common import json_error, sse, streaming, wait_for_disconnect
from tests.support.upstream import record

API_KEY = "AIzaSy-test-fake-key-0123456789"
VERSIONS = {"v1", "v1beta"}
REPLY = ["Hello", " from", " the", " fake", " Gemini", "."]
PROMPT_TOKENS = 9
THOUGHT_TOKENS = 4
MODELS = ["gemini-2.5-flash", "gemini-2.5-pro", "text-embedding-004"]
BODY_FIELDS = {
    "contents",
    "systemInstruction",
    "generationConfig",
    "safetySettings",
    "tools",
    "toolConfig",
    "cachedContent",
}
CONFIG_FIELDS = {
    "temperature",
    "topP",
    "topK",
    "candidateCount",
    "maxOutputTokens",
    "stopSequences",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseMimeType",
    "responseSchema",
    "responseLogprobs",
    "logprobs",
    "thinkingConfig",
}
STATUS = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}


def error_response(code: int, message: str, status: str = "", *details: dict) -> web.Response:
    error = {"code": code, "message": message, "status": status or STATUS.get(code, "INTERNAL")}
    if details:
        error["details"] = list(details)
    return json_error(code, orjson.dumps({"error": error}, option=orjson.OPT_INDENT_2))


def bad_key() -> web.Response:
    return error_response(
        400,
        "API key not valid. Please pass a valid API key.",
        "INVALID_ARGUMENT",
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        },
    )


def check_auth(headers: dict[str, str]) -> web.Response | None:
    key = headers.get("x-goog-api-key")
    if key is None:
        return error_response(
            403,
            "Method doesn't allow unregistered callers (callers without established identity).",
            "PERMISSION_DENIED",
        )
    return None if key == API_KEY else bad_key()


def _parts_ok(content: object) -> bool:
    parts = content.get("parts") if isinstance(content, dict) else None
    return (
        isinstance(parts, list)
        and bool(parts)
        and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts)
    )


def validate(headers: dict[str, str], body: object) -> str | None:
    """The first problem with a GenerateContentRequest, or None."""
    if "application/json" not in headers.get("content-type", ""):
        return "content-type must be application/json"
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    if unknown := sorted(set(body) - BODY_FIELDS):
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{i}].role: must be user or model"
        if not _parts_ok(content):
            return f"* GenerateContentRequest.contents[{i}].parts: must have text parts"
    if "systemInstruction" in body and not _parts_ok(body["systemInstruction"]):
        return "* GenerateContentRequest.system_instruction.parts: must have text parts"
    config = body.get("generationConfig", {})
    if not isinstance(config, dict):
        return "generationConfig must be an object"
    if unknown := sorted(set(config) - CONFIG_FIELDS):
        return (
            f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'generation_config'"
        )
    temperature = config.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        return "* GenerateContentRequest.generation_config.temperature: must be in [0, 2]"
    max_tokens = config.get("maxOutputTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
    stops = config.get("stopSequences")
    if stops is not None and (not isinstance(stops, list) or len(stops) > 5):
        return "* GenerateContentRequest.generation_config.stop_sequences: at most 5"
    return None


def usage(candidates: int | None, thoughts: int = 0) -> dict:
    out: dict = {"promptTokenCount": PROMPT_TOKENS}
    if candidates is not None:
        out["candidatesTokenCount"] = candidates
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    out["totalTokenCount"] = PROMPT_TOKENS + (candidates or 0) + thoughts
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
    return out


def response(model: str, parts: list[dict] | None, finish: str | None, use: dict | None) -> dict:
    candidate: dict = {"index": 0}
    if parts is not None:
        candidate["content"] = {"parts": parts, "role": "model"}
    if finish is not None:
        candidate["finishReason"] = finish
        if finish == "SAFETY":
            candidate["safetyRatings"] = [
                {
                    "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                    "probability": "HIGH",
                    "blocked": True,
                }
            ]
    out: dict = {"candidates": [candidate]}
    if use is not None:
        out["usageMetadata"] = use
    out["modelVersion"] = model
    out["responseId"] = "fake-response-id"
    return out


def frame(obj: dict) -> bytes:
    return sse(obj, eol=b"\r\n")


def preflight(model: str) -> web.Response | None:
    """The scenarios that fail before any content."""
    if model == "429":
        return error_response(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            "RESOURCE_EXHAUSTED",
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"},
        )
    if model == "500":
        return error_response(500, "An internal error has occurred.", "INTERNAL")
    if model == "503":
        return error_response(
            503, "The model is overloaded. Please try again later.", "UNAVAILABLE"
        )
    if model == "401":
        return bad_key()
    if model == "context":
        return error_response(
            400,
            "The input token count (1200000) exceeds the maximum number of tokens allowed"
            " (1048576).",
            "INVALID_ARGUMENT",
        )
    return None


async def generate(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    version, target = request.match_info["version"], request.match_info["target"]
    model, _, method = target.rpartition(":")
    if version not in VERSIONS or method not in ("streamGenerateContent", "generateContent"):
        return error_response(404, f"Method not found: {version}/models/{target}", "NOT_FOUND")
    if method == "streamGenerateContent" and entry.query.get("alt") != "sse":
        return error_response(400, "this fake serves streamGenerateContent only with alt=sse")
    if (denied := check_auth(entry.headers)) is not None:
        return denied
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return error_response(400, "Invalid JSON payload received.")
    if problem := validate(entry.headers, body):
        return error_response(400, problem, "INVALID_ARGUMENT")
    if (failed := preflight(model)) is not None:
        return failed
    max_tokens = body.get("generationConfig", {}).get("maxOutputTokens")
    finish = "MAX_TOKENS" if max_tokens is not None and max_tokens <= len(REPLY) else "STOP"
    if method == "generateContent":
        return web.json_response(
            response(model, [{"text": "".join(REPLY)}], finish, usage(len(REPLY)))
        )
    return await _stream(request, model, finish)


async def _stream(request: web.Request, model: str, finish: str) -> web.StreamResponse:
    headers = {"content-type": "text/event-stream", "x-content-type-options": "nosniff"}
    async with streaming(request, model, headers) as out:
        if model == "hang":
            await wait_for_disconnect(request)
        if model == "blocked":
            await out.write(
                frame(
                    {
                        "promptFeedback": {
                            "blockReason": "SAFETY",
                            "safetyRatings": [
                                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH"}
                            ],
                        },
                        "usageMetadata": usage(None),
                        "modelVersion": model,
                        "responseId": "fake-response-id",
                    }
                )
            )
            return out
        thoughts = THOUGHT_TOKENS if model == "thinking" else 0
        if thoughts:
            part = {"text": "Considering a greeting.", "thought": True}
            await out.write(frame(response(model, [part], None, usage(None, thoughts))))
        reply = REPLY * 8 if model == "slow" else REPLY
        last = len(reply) - 1
        for i, word in enumerate(reply):
            if model == "slow":
                await asyncio.sleep(0.02)
            if model == "malformed" and i == 2:
                await out.write(b"data: {not json\r\n\r\n")
                return out
            if model == "mid-stream-error" and i == 3:
                error = {
                    "code": 500,
                    "message": "An internal error has occurred.",
                    "status": "INTERNAL",
                }
                await out.write(frame({"error": error}))
                return out
            if model == "reset" and i == 3:
                assert request.transport is not None
                request.transport.abort()
                return out
            if model == "safety" and i == 3:
                await out.write(frame(response(model, None, "SAFETY", usage(i, thoughts))))
                return out
            if model == "truncated" and i == last:
                return out
            done = i == last
            use = usage(i + 1, thoughts) if done or model != "usage-at-end" else None
            await out.write(frame(response(model, [{"text": word}], finish if done else None, use)))
        return out


async def list_models(request: web.Request) -> web.Response:
    entry = await record(request)
    if request.match_info["version"] not in VERSIONS:
        return error_response(404, "Method not found.", "NOT_FOUND")
    if (denied := check_auth(entry.headers)) is not None:
        return denied
    size = int(entry.query.get("pageSize", "50"))
    start = int(entry.query.get("pageToken") or 0)
    page = MODELS[start : start + size]
    body: dict = {
        "models": [
            {
                "name": f"models/{m}",
                "version": "001",
                "displayName": m,
                "inputTokenLimit": 1048576,
                "outputTokenLimit": 65536,
                "supportedGenerationMethods": ["embedContent"]
                if "embedding" in m
                else ["generateContent", "countTokens"],
            }
            for m in page
        ]
    }
    if start + size < len(MODELS):
        body["nextPageToken"] = str(start + size)
    return web.json_response(body)


def gemini_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{version}/models/{target}", generate)
    app.router.add_get("/{version}/models", list_models)
    return app
