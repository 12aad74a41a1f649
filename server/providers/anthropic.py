"""The Anthropic Messages API adapter: request body, SSE events, error bodies and model list.

Wire details follow the installed official SDK (anthropic 2.12) where it differs
from older docs: it sends the API key as `Authorization: Bearer` and
`anthropic-version: 2026-10-21`. Options `auth` ("bearer" | "x-api-key") and
`api_version` switch back to the documented `x-api-key` / `2023-06-01` for
gateways that only speak those. `default_max_tokens` fills the required
`max_tokens` when the caller set none. The Messages API has no `seed`, so a
caller's seed is dropped rather than failing the call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Role, Usage
from llmproxy.server.errors import (
    UpstreamError,
    UpstreamInvalidRequestError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.decoding import SSEDecoder, load_event
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.http_chat import HttpChatProvider, option
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEEvent

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2026-10-21"
DEFAULT_MAX_TOKENS = 4096

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
    "pause_turn": FinishReason.OTHER,
}

# The HTTP status each documented error type comes with, for errors sent inside a 200 stream.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def build_body(request: ChatRequest, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """The Messages request: system prompts hoisted to `system`, same-role turns merged.

    The API wants alternating user/assistant turns, so consecutive turns of one
    role become one turn with several text blocks instead of being rejected.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for m in request.messages:
        if m.role is Role.SYSTEM:
            system.append(m.content)
        elif turns and turns[-1]["role"] == m.role.value:
            last = turns[-1]
            if isinstance(last["content"], str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            last["content"].append({"type": "text", "text": m.content})
        else:
            turns.append({"role": m.role.value, "content": m.content})
    p = request.params
    body: dict[str, Any] = {
        "model": request.model,
        # Required by the API: the caller's, else the model's configured cap, else the default.
        "max_tokens": p.max_tokens or request.max_output_tokens or default_max_tokens,
        "messages": turns,
        "stream": True,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if p.temperature is not None:
        body["temperature"] = p.temperature
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    return body


def parse_error_body(body: bytes) -> tuple[str, str]:
    """(error type, message) of `{"type":"error","error":{"type","message"}}`, or an excerpt."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", body[:200].decode("utf-8", "replace")
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, dict):
        return str(err.get("type") or ""), str(err.get("message") or "")[:500]
    return "", str(obj)[:200]


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str
) -> UpstreamError:
    _, message = parse_error_body(body)
    return classify_status(status, message, provider=provider, headers=headers)


@dataclass(slots=True)
class StreamState:
    """What the events of one stream have said so far."""

    input_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    output_tokens: int = 0
    has_usage: bool = False
    stop_reason: str = ""
    done: bool = False

    def apply_usage(self, usage: Mapping[str, Any]) -> None:
        # Counts are cumulative, and message_delta may repeat or omit any of them.
        if (v := usage.get("input_tokens")) is not None:
            self.input_tokens = int(v)
            self.has_usage = True
        if (v := usage.get("cache_creation_input_tokens")) is not None:
            self.cache_creation_tokens = int(v)
        if (v := usage.get("cache_read_input_tokens")) is not None:
            self.cache_read_tokens = int(v)
        if (v := usage.get("output_tokens")) is not None:
            self.output_tokens = int(v)
            self.has_usage = True

    def finish(self) -> Finish:
        reason = STOP_REASONS.get(self.stop_reason, FinishReason.OTHER)
        usage = None
        if self.has_usage:
            # Anthropic counts cached prompt tokens apart; our input count includes them.
            usage = Usage(
                input_tokens=self.input_tokens
                + self.cache_creation_tokens
                + self.cache_read_tokens,
                output_tokens=self.output_tokens,
                cached_input_tokens=self.cache_read_tokens,
            )
        return Finish(reason, self.stop_reason, usage)


def parse_event(event: SSEEvent, state: StreamState, *, provider: str) -> str:
    """Apply one SSE event to `state`; return the text it carries ("" for none)."""
    if event.event == "ping":
        return ""
    obj = load_event(event.data, provider=provider, what="stream event")
    kind = obj.get("type") or event.event
    if kind == "content_block_delta":
        delta = obj.get("delta") or {}
        # thinking/signature/input_json deltas are not answer text.
        return (delta.get("text") or "") if delta.get("type") == "text_delta" else ""
    if kind == "message_start":
        state.apply_usage((obj.get("message") or {}).get("usage") or {})
    elif kind == "message_delta":
        state.stop_reason = (obj.get("delta") or {}).get("stop_reason") or state.stop_reason
        state.apply_usage(obj.get("usage") or {})
    elif kind == "message_stop":
        state.done = True
    elif kind == "error":
        raise stream_error(obj.get("error"), provider=provider)
    return ""


def stream_error(error: Any, *, provider: str) -> UpstreamError:
    """An `error` event sent after the 200, mapped as if it had been the HTTP status."""
    kind = str(error.get("type") or "") if isinstance(error, dict) else ""
    message = str(error.get("message") or "") if isinstance(error, dict) else str(error)
    return classify_status(ERROR_STATUS.get(kind, 500), message[:500], provider=provider)


class AnthropicProvider(HttpChatProvider):
    """Streams `POST {base_url}/v1/messages`; lists `GET {base_url}/v1/models`."""

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        self._version = option(settings, "api_version", str, API_VERSION)
        auth = option(settings, "auth", str, "bearer").lower()
        if auth not in ("bearer", "x-api-key"):
            raise ValueError(f"providers[{settings.name}].options.auth must be bearer or x-api-key")
        self._bearer = auth == "bearer"
        self._max_tokens = option(settings, "default_max_tokens", int, DEFAULT_MAX_TOKENS)
        super().__init__(settings, client, keys)
        self._base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    def url(self, request: ChatRequest) -> str:
        return self._base + "/v1/messages"

    def static_headers(self) -> dict[str, str]:
        return {"anthropic-version": self._version}

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"authorization": f"Bearer {secret}"} if self._bearer else {"x-api-key": secret}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request, default_max_tokens=self._max_tokens)
        if not body["messages"]:
            raise UpstreamInvalidRequestError(
                f"{self.name}: a user or assistant message is required", provider=self.name
            )
        return body

    def new_decoder(self) -> SSEDecoder[StreamState]:
        return SSEDecoder(self.name, StreamState(), parse_event, "message_stop")

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_error(status, headers, body, provider=self.name)

    def models_url(self) -> str | None:
        # One page at the API's largest `limit`: far more models than Anthropic offers.
        return self._base + "/v1/models?limit=1000"
