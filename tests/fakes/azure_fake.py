"""A fake Azure OpenAI data plane speaking its documented wire format.

Strict about what Azure checks: the deployment in the path, a supported
`api-version` query (and `stream_options` only from 2024-09-01 on), the key in
the `api-key` header (a Bearer header is refused: it means the key went out
the wrong way). Streams carry Azure's extras: a first chunk with
`prompt_filter_results` and empty `choices`, `content_filter_results` on each
choice. The deployment name picks a scenario:

  gpt-4o-mini / o3-mini   normal stream        content-filter   text, then finish content_filter
  prompt-filter  400 code content_filter       429              retry-after: 6 (and -ms)
  500            server error                  truncated        chunks, no [DONE]
  mid-stream-error  chunks, then an error      malformed        a chunk that is not JSON
  any other name    404 DeploymentNotFound
"""

from __future__ import annotations

import orjson
from aiohttp import web

from tests.fakes.common import json_error, sse, streaming
from tests.fakes.openai_fake import REPLY, FakeConfig, usage_of, validate_body
from tests.support.upstream import record

AZURE_KEY = "0123456789abcdef0123456789abcdef"
API_VERSIONS = {"2024-06-01", "2024-10-21", "2025-01-01-preview", "2025-04-01-preview"}
DEPLOYMENTS = {
    "gpt-4o-mini",
    "o3-mini",
    "content-filter",
    "prompt-filter",
    "429",
    "500",
    "truncated",
    "mid-stream-error",
    "malformed",
}
SAFE = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}
MODELS = ["gpt-4o-mini-2024-07-18", "o3-mini-2025-01-31"]


def azure_error(http_status: int, code: str, message: str, **extra) -> web.Response:
    return json_error(
        http_status, orjson.dumps({"error": {"code": code, "message": message, **extra}}), None
    )


def azure_chunk(model: str, delta: dict, finish: str | None = None) -> bytes:
    return sse(
        {
            "choices": [
                {
                    "content_filter_results": {} if finish else SAFE,
                    "delta": delta,
                    "finish_reason": finish,
                    "index": 0,
                    "logprobs": None,
                }
            ],
            "created": 1741570283,
            "id": "chatcmpl-AzFake",
            "model": model,
            "object": "chat.completion.chunk",
            "system_fingerprint": "fp_azure",
        }
    )


def check_access(request: web.Request, headers: dict[str, str]) -> web.Response | None:
    if headers.get("api-key") != AZURE_KEY or "authorization" in headers:
        return azure_error(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
            "provide a valid key for an active subscription and use a correct regional API "
            "endpoint for your resource.",
        )
    if request.query.get("api-version") not in API_VERSIONS:
        return azure_error(404, "404", "Resource not found")
    return None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    if (denied := check_access(request, entry.headers)) is not None:
        return denied
    deployment = request.match_info["deployment"]
    if deployment not in DEPLOYMENTS:
        return azure_error(
            404,
            "DeploymentNotFound",
            "The API deployment for this resource does not exist. If you created the "
            "deployment within the last 5 minutes, please wait a moment and try again.",
        )
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return azure_error(400, "BadRequest", "Could not parse the JSON body")
    if "stream_options" in body and request.query["api-version"] < "2024-09-01":
        return azure_error(
            400, "BadRequest", "Unrecognized request argument supplied: stream_options"
        )
    # Azure takes the model from the path; a `model` field, if any, is ignored.
    checked = {"model": deployment, **{k: v for k, v in body.items() if k != "model"}}
    if (problem := validate_body(entry.headers, checked, FakeConfig())) is not None:
        return azure_error(400, "BadRequest", problem)
    if deployment == "prompt-filter":
        return azure_error(
            400,
            "content_filter",
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry.",
            param="prompt",
            status=400,
            innererror={
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {
                    **SAFE,
                    "violence": {"filtered": True, "severity": "high"},
                },
            },
        )
    if deployment == "429":
        return json_error(
            429,
            orjson.dumps(
                {
                    "error": {
                        "code": "429",
                        "message": "Requests to the ChatCompletions_Create Operation under Azure "
                        "OpenAI API version 2024-10-21 have exceeded token rate limit of your "
                        "current OpenAI S0 pricing tier. Please retry after 6 seconds.",
                    }
                }
            ),
            {"retry-after": "6", "retry-after-ms": "6000"},
        )
    if deployment == "500":
        return azure_error(500, "InternalServerError", "The server had an error.")
    return await stream_answer(request, body, deployment)


async def stream_answer(request: web.Request, body: dict, deployment: str) -> web.StreamResponse:
    model = "gpt-4o-mini-2024-07-18"
    async with streaming(request, deployment, {"content-type": "text/event-stream"}) as response:
        await response.write(
            sse(
                {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": SAFE}],
                }
            )
        )
        await response.write(azure_chunk(model, {"role": "assistant", "content": ""}))
        for i, word in enumerate(REPLY):
            if deployment == "malformed" and i == 2:
                await response.write(b"data: {not json\n\n")
                return response
            if deployment == "mid-stream-error" and i == 3:
                await response.write(
                    sse({"error": {"code": "InternalServerError", "message": "Backend failure"}})
                )
                return response
            if deployment == "content-filter" and i == 3:
                await response.write(azure_chunk(model, {}, "content_filter"))
                await response.write(b"data: [DONE]\n\n")
                return response
            await response.write(azure_chunk(model, {"content": word}))
        if deployment == "truncated":
            return response
        await response.write(azure_chunk(model, {}, "stop"))
        if body.get("stream_options", {}).get("include_usage"):
            await response.write(
                sse(
                    {
                        "choices": [],
                        "created": 1741570283,
                        "id": "chatcmpl-AzFake",
                        "model": model,
                        "object": "chat.completion.chunk",
                        "usage": usage_of(len(REPLY)),
                    }
                )
            )
        await response.write(b"data: [DONE]\n\n")
        return response


async def models(request: web.Request) -> web.Response:
    entry = await record(request)
    if (denied := check_access(request, entry.headers)) is not None:
        return denied
    return web.json_response(
        {
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "status": "succeeded",
                    "created_at": 1721347200,
                    "capabilities": {"chat_completion": True, "completion": False},
                    "lifecycle_status": "generally-available",
                }
                for m in MODELS
            ],
            "object": "list",
        }
    )


def azure_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", chat_completions)
    app.router.add_get("/openai/models", models)
    return app
