"""The Chat Completions adapter that OpenAI and every OpenAI-compatible server share.

This is also the generic `openai_compatible` provider (vLLM, LM Studio, OpenRouter,
xAI, Groq, Together, Perplexity): it sends only the common subset of fields, takes
its base URL and extra headers from config, and with the `include_usage: false`
option leaves out `stream_options` for servers that reject it. Subclasses (OpenAI,
Azure, Mistral) override only what differs: URL, auth header, body fields, errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Message, Usage
from llmproxy.server.errors import (
    UpstreamContextTooLongError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.http_chat import HttpChatProvider, option
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEParser

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


def build_messages(messages: tuple[Message, ...]) -> list[dict[str, str]]:
    return [{"role": m.role.value, "content": m.content} for m in messages]


def build_body(request: ChatRequest, *, include_usage: bool = True) -> dict[str, Any]:
    """The Chat Completions request body; unset parameters are left out entirely."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": build_messages(request.messages),
        "stream": True,
    }
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    p = request.params
    if p.temperature is not None:
        body["temperature"] = p.temperature
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.top_p is not None:
        body["top_p"] = p.top_p
    if p.stop:
        body["stop"] = list(p.stop)
    if p.seed is not None:
        body["seed"] = p.seed
    return body


def parse_usage(raw: dict[str, Any] | None) -> Usage | None:
    if not raw:
        return None
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=int(raw.get("prompt_tokens") or 0),
        output_tokens=int(raw.get("completion_tokens") or 0),
        cached_input_tokens=int(details.get("cached_tokens") or 0),
    )


def finish_reason(raw: str) -> FinishReason:
    return FINISH_REASONS.get(raw, FinishReason.OTHER if raw else FinishReason.STOP)


@dataclass(slots=True, frozen=True)
class ErrorBody:
    """The fields of an OpenAI-style `{"error": {...}}` body; empty strings when absent."""

    message: str
    type: str = ""
    code: str = ""
    param: str = ""


def describe_detail(detail: list[Any]) -> str:
    """A pydantic-style `detail` list (FastAPI servers, Mistral's 422) as one line."""
    parts = []
    for item in detail[:5]:
        if isinstance(item, dict):
            loc = ".".join(str(p) for p in item.get("loc") or ())
            parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        else:
            parts.append(str(item))
    return "; ".join(parts)


def describe(message: Any) -> str:
    """An error message that may be a string, JSON in a string, or a `{"detail": [...]}`."""
    if isinstance(message, str):
        if not message.startswith("{"):
            return message
        try:
            message = orjson.loads(message)
        except orjson.JSONDecodeError:
            return message
    if isinstance(message, dict) and "detail" in message:
        message = message["detail"]
    if isinstance(message, list):
        return describe_detail(message)
    return message if isinstance(message, str) else orjson.dumps(message).decode()


def parse_error(obj: Any) -> ErrorBody:
    """Reads `{"error": {...}}`, a bare error object, `{"message": ...}` or `{"detail": [...]}`."""
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if not isinstance(err, dict):
        return ErrorBody(str(err)[:500])
    message = err.get("message")
    if message is None:
        message = err.get("detail", "")
    code = err.get("code")
    return ErrorBody(
        describe(message)[:500],
        str(err.get("type") or ""),
        "" if code is None else str(code),
        str(err.get("param") or ""),
    )


def parse_error_body(body: bytes) -> ErrorBody:
    try:
        return parse_error(orjson.loads(body))
    except orjson.JSONDecodeError:
        return ErrorBody(body[:200].decode("utf-8", "replace").strip())


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, or a short excerpt of the body."""
    return parse_error_body(body).message


def classify_error_body(
    status: int, headers: httpx.Headers | None, err: ErrorBody, *, provider: str
) -> UpstreamError:
    """Status first, refined by the documented error codes that the status alone hides."""
    if err.code == "context_length_exceeded":
        return UpstreamContextTooLongError(
            f"{provider}: upstream returned HTTP {status}: {err.message}",
            provider=provider,
            status=status,
        )
    return classify_status(status, err.message, provider=provider, headers=headers)


class ChunkDecoder:
    """Pure: a Chat Completions SSE byte stream in, answer text and the final Finish out."""

    __slots__ = ("_sse", "done", "finish_raw", "provider", "stream_error", "usage")

    def __init__(self, provider: str, stream_error: Callable[[Any], UpstreamError]) -> None:
        self.provider = provider
        # Maps an error object sent inside a 200 stream; the provider knows its codes.
        self.stream_error = stream_error
        self._sse = SSEParser()
        self.done = False
        self.finish_raw = ""
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> str:
        texts: list[str] = []
        # Bytes straight to orjson: no str or event object per chunk (one chunk per token).
        for name, payload in self._sse.feed_raw(data):
            if payload == b"[DONE]":
                self.done = True
                break
            try:
                obj = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(
                    f"{self.provider}: malformed stream chunk", provider=self.provider
                ) from None
            if type(obj) is not dict:
                raise UpstreamProtocolError(
                    f"{self.provider}: stream chunk is not an object", provider=self.provider
                )
            if "error" in obj or name == b"error":
                raise self.stream_error(obj.get("error", obj))
            self.read_chunk(obj, texts)
        return "".join(texts)

    def read_chunk(self, obj: dict[str, Any], texts: list[str]) -> None:
        for choice in obj.get("choices") or ():
            delta = choice.get("delta")
            if delta and (text := delta.get("content")):
                texts.append(text)
            if reason := choice.get("finish_reason"):
                self.finish_raw = reason
        if usage := obj.get("usage"):
            self.usage = parse_usage(usage)
        elif (groq := obj.get("x_groq")) and groq.get("usage"):
            self.usage = parse_usage(groq["usage"])

    def finish(self) -> Finish:
        if not self.done:
            raise UpstreamUnavailableError(
                f"{self.provider}: stream ended before [DONE]", provider=self.provider
            )
        return Finish(finish_reason(self.finish_raw), self.finish_raw, self.usage)


class OpenAICompatibleProvider(HttpChatProvider):
    """Streams `POST {base_url}/chat/completions` and parses its SSE chunks."""

    default_base_url: ClassVar[str] = ""
    include_usage: ClassVar[bool] = True

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        if not self.base_url:
            raise ValueError(f"providers[{settings.name}].base_url is required")
        self._include_usage = option(settings, "include_usage", bool, self.include_usage)

    def url(self, request: ChatRequest) -> str:
        return self.base_url + "/chat/completions"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        return build_body(request, include_usage=self._include_usage)

    def new_decoder(self) -> ChunkDecoder:
        return ChunkDecoder(self.name, self.stream_error)

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return self.classify_error_obj(status, headers, parse_error_body(body))

    def stream_error(self, error: Any) -> UpstreamError:
        """An error object inside a 200 stream: the request failed part-way (a 5xx unless
        the object carries a numeric code)."""
        err = parse_error(error)
        status = int(err.code) if err.code.isdigit() else 500
        if not 400 <= status < 600:  # e.g. Mistral's own codes ("1300"), not HTTP statuses
            status = 500
        return self.classify_error_obj(status, None, err)

    def classify_error_obj(
        self, status: int, headers: httpx.Headers | None, err: ErrorBody
    ) -> UpstreamError:
        return classify_error_body(status, headers, err, provider=self.name)

    def models_url(self) -> str | None:
        return self.base_url + "/models"
