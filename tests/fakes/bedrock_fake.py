"""A fake Bedrock runtime (ConverseStream) and control plane (ListFoundationModels).

It verifies each request's SigV4 signature the way AWS does: from the path and
headers as they arrived on the socket (so a transport that rewrites the path is
caught), the body's hash, a known access key, the region and the `bedrock`
signing name. Bedrock API keys (Bearer) are accepted too. Answers are
`application/vnd.amazon.eventstream` messages with CRC32 checksums; errors carry
`x-amzn-ErrorType` and `{"message": ...}`. The model id picks a scenario:

  anthropic.claude-3-haiku-20240307-v1:0 (any other)  normal stream
  throttle       429 ThrottlingException        too-long     400 "Input is too long"
  500            InternalServerException        not-ready    429 ModelNotReadyException
  stream-throttle  text, then a throttlingException event
  truncated      text, no messageStop           corrupt      a message with a bad checksum
  guardrail      stopReason guardrail_intervened
"""

from __future__ import annotations

import datetime
import itertools
import re
import struct
import zlib

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.fakes.common import json_error, streaming
from tests.support.upstream import record

ACCESS_KEY = "AKIAFAKEBEDROCK12345"
SECRET_KEY = "fakeSecret/Key+With/Slashes0123456789abcd"
CREDENTIAL = f"{ACCESS_KEY}:{SECRET_KEY}"
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1mYWtl"
REGION = "eu-west-3"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
REPLY = ["Salut", " depuis", " le", " faux", " Bedrock", "."]
INPUT_TOKENS, CACHE_READ = 17, 5
MODELS = [MODEL, "amazon.nova-micro-v1:0"]
FIELDS = {
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "guardrailConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "requestMetadata",
    "performanceConfig",
    "promptVariables",
}
INFERENCE = {
    "maxTokens": int,
    "temperature": (int, float),
    "topP": (int, float),
    "stopSequences": list,
}
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<sig>[0-9a-f]+)"
)


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message (string headers only, as Bedrock sends)."""
    raw_headers = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw_headers + payload
    return head + struct.pack(">I", zlib.crc32(head))


def event(kind: str, payload: dict) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, orjson.dumps({**payload, "p": "abcdefghijklmnopqrstu"}))


def exception(kind: str, message: str) -> bytes:
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}))


def aws_error(status: int, kind: str, message: str) -> web.Response:
    error_type = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    return json_error(status, orjson.dumps({"message": message}), {"x-amzn-ErrorType": error_type})


def signature_problem(request: web.Request, headers: dict[str, str], body: bytes) -> str | None:
    """None when the request is signed by our key for bedrock in REGION, else why not."""
    if headers.get("authorization") == f"Bearer {API_KEY}":
        return None
    match = _AUTH.fullmatch(headers.get("authorization", ""))
    if match is None:
        return "UnrecognizedClientException"
    if match["key"] != ACCESS_KEY:
        return "UnrecognizedClientException"
    if (match["region"], match["service"]) != (REGION, "bedrock"):
        return "InvalidSignatureException"
    when = datetime.datetime.strptime(headers.get("x-amz-date", ""), "%Y%m%dT%H%M%SZ")
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    if abs((now - when).total_seconds()) > 300:
        return "InvalidSignatureException"
    signed = {name: headers[name] for name in match["signed"].split(";")}
    # The path exactly as it arrived: AWS canonicalises what it receives, not what was meant.
    url = f"http://{headers['host']}{request.raw_path}"
    replay = AWSRequest(method=request.method, url=url, data=body, headers=signed)
    replay.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "bedrock", REGION)
    expected = auth.signature(auth.string_to_sign(replay, auth.canonical_request(replay)), replay)
    return None if expected == match["sig"] else "InvalidSignatureException"


def denied(problem: str) -> web.Response:
    messages = {
        "UnrecognizedClientException": "The security token included in the request is invalid.",
        "InvalidSignatureException": "The request signature we calculated does not match the "
        "signature you provided. Check your AWS Secret Access Key and signing method.",
    }
    return aws_error(403, problem, messages[problem])


def body_problem(body: object) -> str | None:
    if not isinstance(body, dict) or set(body) - FIELDS:
        return "Malformed input request: extraneous key is not permitted"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or messages[0].get("role") != "user":
        return "A conversation must start with a user message."
    for previous, current in itertools.pairwise(messages):
        if previous["role"] == current["role"]:
            return "A conversation must alternate between user and assistant roles."
    for m in messages:
        blocks = m.get("content")
        if m.get("role") not in ("user", "assistant") or not isinstance(blocks, list):
            return "Malformed message"
        if not all(isinstance(b, dict) and isinstance(b.get("text"), str) for b in blocks):
            return "Malformed content block"
    for key, value in body.get("inferenceConfig", {}).items():
        if key not in INFERENCE or not isinstance(value, INFERENCE[key]):
            return f"Malformed inferenceConfig.{key}"
    return None


async def converse_stream(request: web.Request) -> web.StreamResponse:
    entry = await record(request)
    if (problem := signature_problem(request, entry.headers, entry.body)) is not None:
        return denied(problem)
    try:
        body = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return aws_error(400, "ValidationException", "Malformed input request")
    if (problem := body_problem(body)) is not None:
        return aws_error(400, "ValidationException", problem)
    model = request.match_info["model"]
    if model == "throttle":
        return aws_error(429, "ThrottlingException", "Too many requests, please wait.")
    if model == "not-ready":
        return aws_error(429, "ModelNotReadyException", "Model is not ready for inference.")
    if model == "too-long":
        return aws_error(400, "ValidationException", "Input is too long for requested model.")
    if model == "500":
        return aws_error(500, "InternalServerException", "Internal server error")
    return await stream_answer(request, body, model)


async def stream_answer(request: web.Request, body: dict, model: str) -> web.StreamResponse:
    headers = {"content-type": "application/vnd.amazon.eventstream", "x-amzn-requestid": "1"}
    async with streaming(request, model, headers) as response:
        await response.write(event("messageStart", {"role": "assistant"}))
        for i, word in enumerate(REPLY):
            if i == 3 and model == "stream-throttle":
                await response.write(exception("throttlingException", "Too many tokens"))
                return response
            if i == 3 and model == "corrupt":
                await response.write(
                    event("contentBlockDelta", {"delta": {"text": "x"}})[:-1] + b"!"
                )
                return response
            delta = {"contentBlockIndex": 0, "delta": {"text": word}}
            await response.write(event("contentBlockDelta", delta))
        await response.write(event("contentBlockStop", {"contentBlockIndex": 0}))
        if model == "truncated":
            return response
        limit = body.get("inferenceConfig", {}).get("maxTokens")
        reason = "max_tokens" if limit is not None and limit <= len(REPLY) else "end_turn"
        if model == "guardrail":
            reason = "guardrail_intervened"
        await response.write(event("messageStop", {"stopReason": reason}))
        usage = {
            "inputTokens": INPUT_TOKENS,
            "outputTokens": len(REPLY),
            "totalTokens": INPUT_TOKENS + len(REPLY),
            "cacheReadInputTokens": CACHE_READ,
        }
        await response.write(event("metadata", {"usage": usage, "metrics": {"latencyMs": 321}}))
        return response


async def foundation_models(request: web.Request) -> web.Response:
    entry = await record(request)
    if (problem := signature_problem(request, entry.headers, entry.body)) is not None:
        return denied(problem)
    return web.json_response(
        {
            "modelSummaries": [
                {
                    "modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/{m}",
                    "modelId": m,
                    "modelName": m,
                    "providerName": "Fake",
                    "inputModalities": ["TEXT"],
                    "outputModalities": ["TEXT"],
                    "responseStreamingSupported": True,
                    "customizationsSupported": [],
                    "inferenceTypesSupported": ["ON_DEMAND"],
                    "modelLifecycle": {"status": "ACTIVE"},
                }
                for m in MODELS
            ]
        }
    )


def bedrock_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/model/{model}/converse-stream", converse_stream)
    app.router.add_get("/foundation-models", foundation_models)
    return app
