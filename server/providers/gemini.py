"""The Google Gemini API adapter: `streamGenerateContent?alt=sse` bodies, chunks, errors, models.

Path version: the installed official SDK (google-genai 3.4) calls `v1` by
default; option `api_version` ("v1beta") switches for features only served
there. Auth is the `x-goog-api-key` header. Safety stops, and prompts blocked
before any candidate (`promptFeedback.blockReason`), end as CONTENT_FILTER.
Gemini refuses a bad key with a 400 whose ErrorInfo reason is API_KEY_INVALID,
and says when to retry in a RetryInfo detail rather than a header; both are read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Role, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.decoding import SSEDecoder, load_event
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.http_chat import HttpChatProvider, option
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEEvent

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1"

_FILTERED = FinishReason.CONTENT_FILTER
FINISH_REASONS = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "SAFETY": _FILTERED,
    "RECITATION": _FILTERED,
    "BLOCKLIST": _FILTERED,
    "PROHIBITED_CONTENT": _FILTERED,
    "SPII": _FILTERED,
    "IMAGE_SAFETY": _FILTERED,
    "IMAGE_PROHIBITED_CONTENT": _FILTERED,
    "IMAGE_RECITATION": _FILTERED,
    "MODEL_ARMOR": _FILTERED,
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def model_path(model: str) -> str:
    """`models/{model}` unless the name already carries its collection (e.g. tunedModels/x)."""
    return model if "/" in model else f"models/{model}"


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The GenerateContentRequest: system prompts to `systemInstruction`, roles user/model.

    Consecutive turns of one role become one Content with several parts, so the
    turns alternate as the API expects.
    """
    system: list[dict[str, str]] = []
    contents: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role is Role.SYSTEM:
            system.append({"text": m.content})
            continue
        role = "model" if m.role is Role.ASSISTANT else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].append({"text": m.content})
        else:
            contents.append({"role": role, "parts": [{"text": m.content}]})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    p = request.params
    config: dict[str, Any] = {}
    if p.temperature is not None:
        config["temperature"] = p.temperature
    if p.max_tokens is not None:
        config["maxOutputTokens"] = p.max_tokens
    if p.top_p is not None:
        config["topP"] = p.top_p
    if p.stop:
        config["stopSequences"] = list(p.stop)
    if p.seed is not None:
        config["seed"] = p.seed
    if config:
        body["generationConfig"] = config
    return body


def parse_usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    # Thinking tokens are billed as output, so they count as output here.
    return Usage(
        input_tokens=int(raw.get("promptTokenCount") or 0),
        output_tokens=int(raw.get("candidatesTokenCount") or 0)
        + int(raw.get("thoughtsTokenCount") or 0),
        cached_input_tokens=int(raw.get("cachedContentTokenCount") or 0),
    )


def retry_delay(details: Any) -> float | None:
    """Seconds from a google.rpc.RetryInfo detail (`"retryDelay": "37s"`), if any."""
    for detail in details if isinstance(details, list) else ():
        if (
            isinstance(detail, dict)
            and str(detail.get("@type", "")).endswith("RetryInfo")
            and (match := _DURATION.match(str(detail.get("retryDelay", ""))))
        ):
            return float(match.group(1))
    return None


def classify_error_object(
    status: int,
    error: Mapping[str, Any],
    *,
    provider: str,
    headers: Mapping[str, str] | None = None,
) -> UpstreamError:
    """An `{"code","message","status","details"}` error, from a body or from inside a stream."""
    message = str(error.get("message") or "")[:500]
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        reason = str(detail.get("reason") or "") if isinstance(detail, dict) else ""
        if reason.startswith("API_KEY_"):
            return UpstreamAuthError(
                f"{provider}: upstream rejected the gateway's credentials ({reason})",
                provider=provider,
                status=status,
            )
    if status == 503 and "overloaded" in message.lower():
        return UpstreamOverloadedError(
            f"{provider}: upstream returned HTTP 503: {message}", provider=provider, status=503
        )
    error_ = classify_status(status, message, provider=provider, headers=headers)
    if error_.retry_after is None:
        error_.retry_after = retry_delay(details)
    return error_


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str
) -> UpstreamError:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    # Errors may come as one object or, from the streaming endpoint, a one-element list.
    if isinstance(obj, list) and obj:
        obj = obj[0]
    error = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(error, dict):
        error = {"message": body[:200].decode("utf-8", "replace")}
    return classify_error_object(status, error, provider=provider, headers=headers)


@dataclass(slots=True)
class StreamState:
    finish_raw: str = ""
    prompt_blocked: bool = False
    done: bool = False
    usage: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> Finish:
        if self.prompt_blocked:
            return Finish(
                FinishReason.CONTENT_FILTER,
                f"prompt_blocked:{self.finish_raw}",
                parse_usage(self.usage),
            )
        reason = FINISH_REASONS.get(self.finish_raw, FinishReason.OTHER)
        return Finish(reason, self.finish_raw, parse_usage(self.usage))


def parse_event(event: SSEEvent, state: StreamState, *, provider: str) -> str:
    """Apply one GenerateContentResponse chunk to `state`; return its answer text."""
    obj = load_event(event.data, provider=provider, what="stream chunk")
    if (error := obj.get("error")) is not None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        code = error.get("code")
        raise classify_error_object(
            code if isinstance(code, int) else 500, error, provider=provider
        )
    if usage := obj.get("usageMetadata"):
        state.usage = usage  # cumulative: the last one seen is the total
    feedback = obj.get("promptFeedback")
    if feedback and (blocked := feedback.get("blockReason")):
        state.finish_raw, state.prompt_blocked, state.done = str(blocked), True, True
        return ""
    candidates = obj.get("candidates")
    if not candidates:
        return ""
    candidate = candidates[0]
    if reason := candidate.get("finishReason"):
        state.finish_raw, state.done = str(reason), True
    parts = (candidate.get("content") or {}).get("parts")
    if not parts:
        return ""
    # Thought summaries (`"thought": true`) are not answer text.
    return "".join(p.get("text") or "" for p in parts if not p.get("thought"))


class GeminiProvider(HttpChatProvider):
    """Streams `POST {base}/{version}/models/{model}:streamGenerateContent?alt=sse`."""

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._root = f"{base}/{option(settings, 'api_version', str, API_VERSION)}"

    def url(self, request: ChatRequest) -> str:
        return f"{self._root}/{model_path(request.model)}:streamGenerateContent?alt=sse"

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"x-goog-api-key": secret}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request)
        if not body["contents"]:
            raise UpstreamInvalidRequestError(
                f"{self.name}: a user or assistant message is required", provider=self.name
            )
        return body

    def new_decoder(self) -> SSEDecoder[StreamState]:
        # No terminator of its own: the chunk with a finishReason (or a prompt block) is
        # the last, so a stream ending before it was cut off.
        return SSEDecoder(
            self.name, StreamState(), parse_event, "a finishReason", stop_at_done=False
        )

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_error(status, headers, body, provider=self.name)

    def models_url(self) -> str | None:
        # One page at the API's largest pageSize: far more models than Gemini offers.
        return f"{self._root}/models?pageSize=1000"

    def parse_models(self, body: dict[str, Any]) -> list[str]:
        """Model ids without `models/`, keeping those that can generate content."""
        return [
            m["name"].removeprefix("models/")
            for m in body.get("models", ())
            if "generateContent" in m.get("supportedGenerationMethods", ("generateContent",))
        ]
