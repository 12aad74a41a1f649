"""The Cohere v2 Chat adapter: `POST /v2/chat` bodies, its SSE event types, errors, models.

Usage is read from `message-end`: `billed_units` first (what the invoice
counts), `tokens` when no billed units came. Cohere's nucleus parameter is `p`
in [0.01, 0.99]; a caller's top_p of 1.0 ("no nucleus cut") is sent as 0.99
rather than failing the call. Its own status codes 498 (invalid token) and 499
(request cancelled) map to auth and unavailable errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.decoding import SSEDecoder, load_event
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.http_chat import HttpChatProvider
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEEvent

DEFAULT_BASE_URL = "https://api.cohere.com"

FINISH_REASONS = {
    "COMPLETE": FinishReason.STOP,
    "STOP_SEQUENCE": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "TOOL_CALL": FinishReason.TOOL_CALLS,
}


def build_body(request: ChatRequest) -> dict[str, Any]:
    """The v2 chat request; system turns stay in `messages`, where v2 takes them."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
        "stream": True,
    }
    p = request.params
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.temperature is not None:
        body["temperature"] = p.temperature
    if p.top_p is not None:
        body["p"] = min(max(p.top_p, 0.01), 0.99)
    if p.stop:
        body["stop_sequences"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    return body


def parse_usage(raw: Mapping[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    counts = raw.get("billed_units") or raw.get("tokens")
    if not counts:
        return None
    return Usage(
        input_tokens=int(counts.get("input_tokens") or 0),
        output_tokens=int(counts.get("output_tokens") or 0),
        cached_input_tokens=int(raw.get("cached_tokens") or 0),
    )


def error_message(body: bytes) -> str:
    """`message` of Cohere's `{"id", "message"}` error body, or a short excerpt."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(obj, dict) and obj.get("message"):
        return str(obj["message"])[:500]
    return str(obj)[:200]


def classify_error(
    status: int, headers: Mapping[str, str], body: bytes, *, provider: str
) -> UpstreamError:
    if status == 498:  # Cohere's "invalid token"
        return UpstreamAuthError(
            f"{provider}: upstream rejected the gateway's credentials (HTTP 498)",
            provider=provider,
            status=status,
        )
    if status == 499:  # Cohere's "request cancelled": not the caller's doing
        return UpstreamUnavailableError(
            f"{provider}: upstream cancelled the request (HTTP 499)", provider=provider, status=499
        )
    return classify_status(status, error_message(body), provider=provider, headers=headers)


@dataclass(slots=True)
class StreamState:
    finish_raw: str = ""
    done: bool = False
    usage: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> Finish:
        reason = FINISH_REASONS.get(self.finish_raw, FinishReason.OTHER)
        return Finish(reason, self.finish_raw, parse_usage(self.usage))


def parse_event(event: SSEEvent, state: StreamState, *, provider: str) -> str:
    """Apply one v2 stream event to `state`; return its answer text."""
    if event.data == "[DONE]":
        return ""
    obj = load_event(event.data, provider=provider, what="stream event")
    kind = obj.get("type")
    if kind == "content-delta":
        content = ((obj.get("delta") or {}).get("message") or {}).get("content") or {}
        # Reasoning models stream `thinking` in the same event; it is not answer text.
        return content.get("text") or ""
    if kind == "message-end":
        delta = obj.get("delta") or {}
        state.finish_raw = str(delta.get("finish_reason") or "")
        state.usage = delta.get("usage") or {}
        state.done = True
        if state.finish_raw == "ERROR" or delta.get("error"):
            message = str(delta.get("error") or "generation failed")[:500]
            raise UpstreamUnavailableError(
                f"{provider}: upstream failed mid-stream: {message}", provider=provider
            )
        if state.finish_raw == "TIMEOUT":
            raise UpstreamTimeoutError(
                f"{provider}: upstream timed out mid-stream", provider=provider
            )
    elif kind is None and "message" in obj:
        # An error object in place of an event.
        raise UpstreamUnavailableError(
            f"{provider}: upstream failed mid-stream: {str(obj['message'])[:500]}",
            provider=provider,
        )
    return ""


class CohereProvider(HttpChatProvider):
    """Streams `POST {base_url}/v2/chat`; lists `GET {base_url}/v1/models?endpoint=chat`."""

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        self._base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")

    def url(self, request: ChatRequest) -> str:
        return self._base + "/v2/chat"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        if not request.messages:
            raise UpstreamInvalidRequestError(
                f"{self.name}: a message is required", provider=self.name
            )
        return build_body(request)

    def new_decoder(self) -> SSEDecoder[StreamState]:
        return SSEDecoder(self.name, StreamState(), parse_event, "message-end")

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_error(status, headers, body, provider=self.name)

    def models_url(self) -> str | None:
        # One page at the API's largest page_size: far more models than Cohere offers.
        return self._base + "/v1/models?endpoint=chat&page_size=1000"

    def parse_models(self, body: dict[str, Any]) -> list[str]:
        return [m["name"] for m in body.get("models", ())]
