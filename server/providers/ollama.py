"""Ollama's native `/api/chat`: newline-delimited JSON stream, `options`, eval counts as usage.

`base_url` is the server root (default http://127.0.0.1:11434). No auth by default;
configured `api_keys` are sent as Bearer tokens (ollama.com, or a proxy in front).
Options: `keep_alive` (how long Ollama keeps the model loaded, e.g. "5m"), and
`model_options` (defaults for Ollama's `options`, e.g. `num_ctx`; the caller's
parameters win).
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.errors import classify_status
from llmproxy.server.providers.http_chat import HttpChatProvider, option
from llmproxy.server.providers.keys import KeyPool

DONE_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def build_body(
    request: ChatRequest, *, defaults: dict[str, Any] | None = None, keep_alive: Any = None
) -> dict[str, Any]:
    """The /api/chat body: our parameters become Ollama's `options` names."""
    options = dict(defaults or {})
    p = request.params
    if p.temperature is not None:
        options["temperature"] = p.temperature
    if p.max_tokens is not None:
        options["num_predict"] = p.max_tokens
    if p.top_p is not None:
        options["top_p"] = p.top_p
    if p.stop:
        options["stop"] = list(p.stop)
    if p.seed is not None:
        options["seed"] = p.seed
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role.value, "content": m.content} for m in request.messages],
        "stream": True,
    }
    if options:
        body["options"] = options
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return body


def error_message(body: bytes) -> str:
    """Ollama's errors are `{"error": "..."}`."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(obj, dict) and "error" in obj:
        return str(obj["error"])[:500]
    return str(obj)[:500]


class NDJSONDecoder:
    """Pure: an /api/chat NDJSON byte stream in, answer text and the final Finish out."""

    __slots__ = ("_buffer", "done", "finish_raw", "provider", "usage")

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._buffer = b""
        self.done = False
        self.finish_raw = ""
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> str:
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        texts: list[str] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise UpstreamProtocolError(
                    f"{self.provider}: malformed stream line", provider=self.provider
                ) from None
            if not isinstance(obj, dict):
                raise UpstreamProtocolError(
                    f"{self.provider}: stream line is not an object", provider=self.provider
                )
            if "error" in obj:
                # An error after the 200 header: the generation failed part-way.
                raise classify_status(500, str(obj["error"])[:500], provider=self.provider)
            message = obj.get("message")
            if message and (text := message.get("content")):
                texts.append(text)
            if obj.get("done"):
                self.done = True
                self.finish_raw = obj.get("done_reason") or "stop"
                if "eval_count" in obj or "prompt_eval_count" in obj:
                    self.usage = Usage(
                        input_tokens=int(obj.get("prompt_eval_count") or 0),
                        output_tokens=int(obj.get("eval_count") or 0),
                    )
                break
        return "".join(texts)

    def finish(self) -> Finish:
        if not self.done:
            raise UpstreamUnavailableError(
                f"{self.provider}: stream ended before its done line", provider=self.provider
            )
        reason = DONE_REASONS.get(self.finish_raw, FinishReason.OTHER)
        return Finish(reason, self.finish_raw, self.usage)


class OllamaProvider(HttpChatProvider):
    accept = "application/x-ndjson"

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        self.base_url = (settings.base_url or "http://127.0.0.1:11434").rstrip("/")
        self._defaults = option(settings, "model_options", dict, {})
        keep_alive = settings.options.get("keep_alive")
        if keep_alive is not None and not isinstance(keep_alive, str | int):
            raise ValueError(f"providers[{settings.name}].options.keep_alive must be str or int")
        self._keep_alive = keep_alive

    def url(self, request: ChatRequest) -> str:
        return self.base_url + "/api/chat"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        return build_body(request, defaults=self._defaults, keep_alive=self._keep_alive)

    def new_decoder(self) -> NDJSONDecoder:
        return NDJSONDecoder(self.name)

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_status(status, error_message(body), provider=self.name, headers=headers)

    def models_url(self) -> str | None:
        return self.base_url + "/api/tags"

    def parse_models(self, body: dict[str, Any]) -> list[str]:
        return [m.get("model") or m["name"] for m in body.get("models", ())]
