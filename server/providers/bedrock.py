"""AWS Bedrock Converse API: ConverseStream over SigV4, event-stream framing, Bedrock's errors.

Config: `options.region` (default us-east-1); `base_url` overrides the runtime endpoint
(https://bedrock-runtime.REGION.amazonaws.com) and `options.control_url` the one models
are listed from (https://bedrock.REGION.amazonaws.com). Each `api_keys` entry is either
`ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]`, signed with SigV4 by botocore (the
signer boto3 uses), or a Bedrock API key, sent as a Bearer token. Converse has no seed
parameter, so a caller's seed is not sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Role, Usage
from llmproxy.server.errors import (
    UpstreamError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.eventstream import EventStreamDecoder, EventStreamError
from llmproxy.server.providers.http_chat import HttpChatProvider, body_excerpt, option
from llmproxy.server.providers.keys import KeyPool

try:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:  # pragma: no cover - exercised only without the extra installed
    SigV4Auth = None  # type: ignore[assignment,misc]

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "guardrail_intervened": FinishReason.CONTENT_FILTER,
    "content_filtered": FinishReason.CONTENT_FILTER,
}
# Exceptions (before the stream, by x-amzn-ErrorType, or inside it) -> the HTTP status
# their documented class carries; ModelNotReady and ModelError are not the caller's fault.
EXCEPTION_STATUS = {
    "throttlingexception": 429,
    "validationexception": 400,
    "accessdeniedexception": 403,
    "resourcenotfoundexception": 404,
    "modeltimeoutexception": 408,
    "internalserverexception": 500,
    "modelstreamerrorexception": 502,
    "modelerrorexception": 502,
    "serviceunavailableexception": 503,
}
# Characters a path segment may hold unescaped (RFC 3986 pchar): sent and signed as they are,
# since transports normalise the rest and SigV4 signs the path exactly as received.
_PCHAR = ":@!$&'()*+,;="


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The ConverseStream body: system prompts apart, turns as content blocks, and
    consecutive turns of one role merged (Converse requires roles to alternate)."""
    system = [{"text": m.content} for m in request.messages if m.role is Role.SYSTEM]
    messages: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role is Role.SYSTEM:
            continue
        if messages and messages[-1]["role"] == m.role.value:
            messages[-1]["content"].append({"text": m.content})
        else:
            messages.append({"role": m.role.value, "content": [{"text": m.content}]})
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    p = request.params
    config: dict[str, Any] = {}
    if p.max_tokens is not None:
        config["maxTokens"] = p.max_tokens
    if p.temperature is not None:
        config["temperature"] = p.temperature
    if p.top_p is not None:
        config["topP"] = p.top_p
    if p.stop:
        config["stopSequences"] = list(p.stop)
    if config:
        body["inferenceConfig"] = config
    return body


def exception_error(
    kind: str, message: str, *, provider: str, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    key = kind.lower()
    if key == "modelnotreadyexception":
        return UpstreamOverloadedError(
            f"{provider}: model not ready: {message}", provider=provider, status=429
        )
    status = EXCEPTION_STATUS.get(key, 500)
    return classify_status(status, f"{kind}: {message}", provider=provider, headers=headers)


class BedrockDecoder:
    """Pure: ConverseStream event-stream bytes in, answer text and the final Finish out."""

    __slots__ = ("_frames", "done", "finish_raw", "provider", "stopped", "usage")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._frames = EventStreamDecoder()
        self.done = False  # nothing more expected (the metadata event came)
        self.stopped = False  # messageStop came: the answer is complete
        self.finish_raw = ""
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> str:
        try:
            frames = self._frames.feed(data)
        except EventStreamError as exc:
            raise UpstreamProtocolError(
                f"{self.provider}: malformed event stream ({exc})", provider=self.provider
            ) from None
        texts: list[str] = []
        for headers, payload in frames:
            kind = headers.get(":message-type")
            if kind != "event":
                raise self._stream_error(kind, headers, payload)
            event = headers.get(":event-type")
            if event == "contentBlockDelta":
                if text := self._load(payload).get("delta", {}).get("text"):
                    texts.append(text)
            elif event == "messageStop":
                self.stopped = True
                self.finish_raw = self._load(payload).get("stopReason", "")
            elif event == "metadata":
                raw = self._load(payload).get("usage") or {}
                self.usage = Usage(
                    input_tokens=int(raw.get("inputTokens") or 0),
                    output_tokens=int(raw.get("outputTokens") or 0),
                    cached_input_tokens=int(raw.get("cacheReadInputTokens") or 0),
                )
                self.done = True
        return "".join(texts)

    def _load(self, payload: bytes) -> dict[str, Any]:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise UpstreamProtocolError(
                f"{self.provider}: malformed event payload", provider=self.provider
            ) from None
        return obj if isinstance(obj, dict) else {}

    def _stream_error(self, kind: Any, headers: dict[str, Any], payload: bytes) -> UpstreamError:
        if kind == "exception":
            message = str(self._load(payload).get("message", ""))[:500]
            return exception_error(
                str(headers.get(":exception-type", "")), message, provider=self.provider
            )
        message = str(headers.get(":error-message", ""))[:500]
        return UpstreamUnavailableError(
            f"{self.provider}: stream error {headers.get(':error-code', '')}: {message}",
            provider=self.provider,
        )

    def finish(self) -> Finish:
        if not self.stopped:
            raise UpstreamUnavailableError(
                f"{self.provider}: stream ended before messageStop", provider=self.provider
            )
        reason = STOP_REASONS.get(self.finish_raw, FinishReason.OTHER)
        return Finish(reason, self.finish_raw, self.usage)


class BedrockProvider(HttpChatProvider):
    accept = "application/vnd.amazon.eventstream"

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        if SigV4Auth is None:
            raise ValueError(
                f"providers[{settings.name}]: type bedrock needs botocore "
                "(pip install 'llmproxy[bedrock]')"
            )
        super().__init__(settings, client, keys)
        self.region = option(settings, "region", str, "us-east-1")
        runtime = f"https://bedrock-runtime.{self.region}.amazonaws.com"
        self.base_url = (settings.base_url or runtime).rstrip("/")
        control = option(
            settings, "control_url", str, f"https://bedrock.{self.region}.amazonaws.com"
        )
        self.control_url = control.rstrip("/")

    def url(self, request: ChatRequest) -> str:
        return f"{self.base_url}/model/{quote(request.model, safe=_PCHAR)}/converse-stream"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        return build_body(request)

    def new_decoder(self) -> BedrockDecoder:
        return BedrockDecoder(self.name)

    def authorize(
        self, headers: dict[str, str], secret: str, method: str, url: str, content: bytes
    ) -> None:
        if ":" not in secret:
            headers["authorization"] = f"Bearer {secret}"  # a Bedrock API key
            return
        access_key, secret_key, *token = secret.split(":", 2)
        signed = AWSRequest(method=method, url=url, data=content, headers=headers)
        credentials = Credentials(access_key, secret_key, token[0] if token else None)
        SigV4Auth(credentials, "bedrock", self.region).add_auth(signed)
        headers.clear()
        headers.update(signed.headers.items())

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        kind = headers.get("x-amzn-errortype", "").split(":", 1)[0]
        try:
            obj = orjson.loads(body)
            message = str(obj.get("message") or obj.get("Message") or "")[:500]
        except (orjson.JSONDecodeError, AttributeError):
            message = body_excerpt(body)
        if kind and kind.lower() in {*EXCEPTION_STATUS, "modelnotreadyexception"}:
            error = exception_error(kind, message, provider=self.name, headers=headers)
        else:
            text = f"{kind}: {message}" if kind else message
            error = classify_status(status, text, provider=self.name, headers=headers)
        if kind:
            # e.g. InvalidSignatureException vs UnrecognizedClientException: the operator's clue.
            error.metadata["upstream_code"] = kind
        return error

    def models_url(self) -> str | None:
        return self.control_url + "/foundation-models"

    def parse_models(self, body: dict[str, Any]) -> list[str]:
        return [m["modelId"] for m in body.get("modelSummaries", ())]
