"""OpenAI's own Chat Completions API: reasoning-model fields, org/project headers, error codes.

Options: `organization` and `project` (sent as OpenAI-Organization / OpenAI-Project),
`reasoning` (true/false forces the reasoning-model body; by default it follows the
model name: o1, o3, o4 and gpt-5 families), `include_usage` (default true).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from llmproxy.server.domain import ChatRequest
from llmproxy.server.errors import UpstreamError, UpstreamRateLimitedError
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.openai_compat import (
    ErrorBody,
    OpenAICompatibleProvider,
    classify_error_body,
)

_REASONING = re.compile(r"^(?:ft:)?(?:o\d|gpt-5)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 models reject `max_tokens` and take `developer` instructions."""
    return _REASONING.match(model) is not None


def adapt_for_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """Rename what reasoning models spell differently; the rest of the body is unchanged.

    `max_tokens` is refused there ("use max_completion_tokens instead"), and
    `developer` messages are what "system" became for them.
    """
    if "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
    for message in body["messages"]:
        if message["role"] == "system":
            message["role"] = "developer"
    return body


def parse_duration(text: str) -> float | None:
    """Seconds in a Go-style duration as OpenAI writes them: "20ms", "1.5s", "6m0s"."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


def retry_hint(message: str, headers: Mapping[str, str] | None) -> float | None:
    """When no retry-after header came: "Please try again in 1.5s" or x-ratelimit-reset-*."""
    if (match := _TRY_AGAIN.search(message)) is not None:
        return parse_duration(match.group(1))
    if headers is None:
        return None
    waits = [
        d
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if (value := headers.get(name)) and (d := parse_duration(value)) is not None
    ]
    return max(waits) if waits else None


class OpenAIProvider(OpenAICompatibleProvider):
    default_base_url = "https://api.openai.com/v1"

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        self._reasoning = settings.options.get("reasoning")
        if self._reasoning is not None and not isinstance(self._reasoning, bool):
            raise ValueError(f"providers[{settings.name}].options.reasoning must be a bool")
        super().__init__(settings, client, keys)

    def static_headers(self) -> dict[str, str]:
        headers = {}
        for option, header in (
            ("organization", "openai-organization"),
            ("project", "openai-project"),
        ):
            if value := self.settings.options.get(option):
                headers[header] = str(value)
        return headers

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = super().build_body(request)
        reasoning = self._reasoning
        if reasoning is None:
            reasoning = is_reasoning_model(request.model)
        return adapt_for_reasoning(body) if reasoning else body

    def classify_error_obj(
        self, status: int, headers: httpx.Headers | None, err: ErrorBody
    ) -> UpstreamError:
        if "insufficient_quota" in (err.code, err.type):
            # A 429 that waiting will not fix: billing. Not retryable, and its key rests long.
            error = UpstreamRateLimitedError(
                f"{self.name}: upstream quota exhausted (HTTP {status}): {err.message}",
                provider=self.name,
                status=status,
                metadata={"upstream_code": "insufficient_quota"},
            )
            error.retryable = False
            return error
        error = classify_error_body(status, headers, err, provider=self.name)
        if isinstance(error, UpstreamRateLimitedError) and error.retry_after is None:
            error.retry_after = retry_hint(err.message, headers)
        return error
