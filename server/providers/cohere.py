"""The Cohere v2 Chat adapter: `POST /v2/chat` bodies, its SSE event types, errors, models.

Usage is read from `message-end`: `billed_units` first (what the invoice
counts), `tokens` when no billed units came. Cohere's nucleus parameter is `p`
in [0.01, 0.99]; a caller's top_p of 1.0 ("no nucleus cut") is sent as 0.99
rather than failing the call. Its own status codes 498 (invalid token) and 499
(request cancelled) map to auth and unavailable errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from llmproxy.server.domain import (
    ChatRequest,
    Finish,
    FinishReason,
    ProviderEvent,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.errors import (
    classify_status,
    classify_transport_error,
    key_cooldown_s,
)
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEEvent, SSEParser

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
    try:
        obj = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise UpstreamProtocolError(
            f"{provider}: malformed stream event", provider=provider
        ) from None
    if not isinstance(obj, dict):
        raise UpstreamProtocolError(f"{provider}: malformed stream event", provider=provider)
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


class CohereProvider(Provider):
    """Streams `POST {base_url}/v2/chat`; lists `GET {base_url}/v1/models?endpoint=chat`."""

    page_size = 1000

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/")
        self._chat_url = base + "/v2/chat"
        self._models_url = base + "/v1/models"
        self._headers = {
            "content-type": "application/json",
            "accept": "text/event-stream",
            **settings.headers,
        }

    def _build_headers(self, extra: tuple[tuple[str, str], ...] = ()) -> tuple[dict, str | None]:
        headers = dict(self._headers)
        headers.update(extra)
        label = None
        if (key := self.keys.acquire()) is not None:
            secret, label = key
            headers["authorization"] = f"Bearer {secret}"
        return headers, label

    def _failed(self, label: str | None, response: httpx.Response, body: bytes) -> UpstreamError:
        error = classify_error(response.status_code, response.headers, body, provider=self.name)
        if label is not None and (rest := key_cooldown_s(error)) is not None:
            self.keys.cool_down(label, rest)
        return error

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        assert self.client is not None
        if not request.messages:
            raise UpstreamInvalidRequestError(
                f"{self.name}: a message is required", provider=self.name
            )
        headers, label = self._build_headers(request.headers)
        try:
            async with self.client.stream(
                "POST", self._chat_url, content=orjson.dumps(build_body(request)), headers=headers
            ) as response:
                if response.status_code != 200:
                    raise self._failed(label, response, await response.aread())
                async for event in self._parse_stream(response):
                    yield event
        except httpx.TransportError as exc:
            raise classify_transport_error(exc, provider=self.name) from None

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[ProviderEvent]:
        parser = SSEParser()
        state = StreamState()
        name = self.name
        async for chunk in response.aiter_bytes():
            texts = []
            for event in parser.feed(chunk):
                if text := parse_event(event, state, provider=name):
                    texts.append(text)
                if state.done:
                    break
            if texts:
                yield TextDelta("".join(texts))
            if state.done:
                break
        if not state.done:
            raise UpstreamUnavailableError(
                f"{name}: stream ended before message-end", provider=name
            )
        yield state.finish()

    async def list_models(self) -> list[str]:
        assert self.client is not None
        headers, label = self._build_headers()
        headers["accept"] = "application/json"
        names: list[str] = []
        params: dict[str, str | int] = {"endpoint": "chat", "page_size": self.page_size}
        for _ in range(20):  # pages; a bound so a looping cursor cannot spin forever
            try:
                response = await self.client.get(self._models_url, headers=headers, params=params)
            except httpx.TransportError as exc:
                raise classify_transport_error(exc, provider=self.name) from None
            if response.status_code != 200:
                raise self._failed(label, response, response.content)
            try:
                page = orjson.loads(response.content)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(
                    f"{self.name}: malformed models list", provider=self.name
                ) from None
            names.extend(m["name"] for m in page.get("models", ()))
            if not (token := page.get("next_page_token")):
                break
            params["page_token"] = token
        return names
