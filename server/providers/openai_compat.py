"""The Chat Completions adapter that OpenAI and every OpenAI-compatible server share.

Subclasses (OpenAI, Azure, Mistral, vLLM, Groq, ...) override only what differs:
the URL, the auth header, and the body fields they add or rename.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from llmproxy.server.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailableError
from llmproxy.server.providers.base import Provider
from llmproxy.server.providers.errors import classify_status, classify_transport_error
from llmproxy.server.providers.sse import SSEParser

FINISH_REASONS = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
}


def build_body(request: ChatRequest, *, include_usage: bool = True) -> dict[str, Any]:
    """The Chat Completions request body; unset parameters are left out entirely."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
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


def error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, or a short excerpt of the body."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(obj, dict):
        err = obj.get("error", obj)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:500]
        return str(err)[:500]
    return str(obj)[:500]


class OpenAICompatibleProvider(Provider):
    """Streams `POST {base_url}/chat/completions` and parses its SSE chunks."""

    include_usage = True

    def url(self, request: ChatRequest) -> str:
        return self.settings.base_url.rstrip("/") + "/chat/completions"

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"authorization": f"Bearer {secret}"}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        include = bool(self.settings.options.get("include_usage", self.include_usage))
        return build_body(request, include_usage=include)

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_status(status, error_message(body), provider=self.name, headers=headers)

    def build_headers(self, request: ChatRequest) -> tuple[dict[str, str], str | None]:
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        headers.update(self.settings.headers)
        headers.update(request.headers)
        label = None
        if (key := self.keys.acquire()) is not None:
            secret, label = key
            headers.update(self.auth_headers(secret))
        return headers, label

    def _cool_down(self, label: str | None, error: UpstreamError) -> None:
        if label is None:
            return
        if error.status == 429:
            self.keys.cool_down(label, error.retry_after or 1.0)
        elif error.status in (401, 403):
            self.keys.cool_down(label, 300.0)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        assert self.client is not None
        headers, label = self.build_headers(request)
        body = orjson.dumps(self.build_body(request))
        try:
            async with self.client.stream(
                "POST", self.url(request), content=body, headers=headers
            ) as response:
                if response.status_code != 200:
                    error = self.classify_error(
                        response.status_code, response.headers, await response.aread()
                    )
                    self._cool_down(label, error)
                    raise error
                async for event in self._parse_stream(response):
                    yield event
        except httpx.TransportError as exc:
            raise classify_transport_error(exc, provider=self.name) from None

    async def _parse_stream(self, response: httpx.Response) -> AsyncIterator[ProviderEvent]:
        parser = SSEParser()
        finish_raw = ""
        usage: Usage | None = None
        done = False
        async for chunk in response.aiter_bytes():
            texts: list[str] = []
            for event in parser.feed(chunk):
                if event.data == "[DONE]":
                    done = True
                    break
                try:
                    obj = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    raise UpstreamProtocolError(
                        f"{self.name}: malformed stream chunk", provider=self.name
                    ) from None
                if "error" in obj:
                    raise self.stream_error(obj["error"])
                for choice in obj.get("choices") or ():
                    delta = choice.get("delta") or {}
                    if text := delta.get("content"):
                        texts.append(text)
                    if reason := choice.get("finish_reason"):
                        finish_raw = reason
                if obj.get("usage"):
                    usage = parse_usage(obj["usage"])
            if texts:
                yield TextDelta("".join(texts))
            if done:
                break
        if not done:
            raise UpstreamUnavailableError(
                f"{self.name}: stream ended before [DONE]", provider=self.name
            )
        reason = FINISH_REASONS.get(
            finish_raw, FinishReason.OTHER if finish_raw else FinishReason.STOP
        )
        yield Finish(reason, finish_raw, usage)

    def stream_error(self, error: Any) -> UpstreamError:
        """An error object sent inside the stream after a 200."""
        message = error.get("message", "") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        status = code if isinstance(code, int) else 500
        return classify_status(status, str(message)[:500], provider=self.name)

    async def list_models(self) -> list[str]:
        assert self.client is not None
        headers, _ = self.build_headers(ChatRequest(model="", messages=()))
        url = self.settings.base_url.rstrip("/") + "/models"
        try:
            response = await self.client.get(url, headers=headers)
        except httpx.TransportError as exc:
            raise classify_transport_error(exc, provider=self.name) from None
        if response.status_code != 200:
            raise self.classify_error(response.status_code, response.headers, response.content)
        return [m["id"] for m in response.json().get("data", [])]
