"""Azure OpenAI: Chat Completions on a deployment, `api-version` in the query, `api-key` auth.

`base_url` is the resource endpoint (https://NAME.openai.azure.com) and a model's
`upstream_model` is the deployment name. Options: `api_version` (default the
latest GA data-plane version), `reasoning` (true for o-series/gpt-5 deployments,
whose names need not say so), `include_usage` (default true).
A prompt or answer stopped by Azure's content filter ends with FinishReason.CONTENT_FILTER.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, FinishReason
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.http_chat import option
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.openai import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


def is_content_filtered(status: int, body: bytes) -> bool:
    """Azure refuses a filtered prompt with HTTP 400 and error code `content_filter`."""
    if status != 400 or b"content_filter" not in body:
        return False
    try:
        error = orjson.loads(body).get("error") or {}
        inner = error.get("innererror") or {}
        return error.get("code") == "content_filter" or (
            inner.get("code") == "ResponsibleAIPolicyViolation"
        )
    except (orjson.JSONDecodeError, AttributeError):  # not JSON, or not the documented shape
        return False


class AzureOpenAIProvider(OpenAIProvider):
    """OpenAI's models behind Azure's URL scheme, auth header and content filter."""

    default_base_url = ""  # the resource endpoint has no default

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        endpoint = self.base_url
        if endpoint.endswith("/openai"):
            endpoint = endpoint[: -len("/openai")]
        self.endpoint = endpoint
        self.api_version = option(settings, "api_version", str, DEFAULT_API_VERSION)
        self._query = "?api-version=" + quote(self.api_version, safe="")

    def url(self, request: ChatRequest) -> str:
        deployment = quote(request.model, safe="")
        return f"{self.endpoint}/openai/deployments/{deployment}/chat/completions{self._query}"

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"api-key": secret}

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = super().build_body(request)
        # The deployment in the path names the model; the documented body has no `model`.
        del body["model"]
        return body

    def finish_from_error(self, status: int, body: bytes) -> Finish | None:
        if is_content_filtered(status, body):
            return Finish(FinishReason.CONTENT_FILTER, "content_filter", None)
        return None

    def models_url(self) -> str | None:
        return f"{self.endpoint}/openai/models{self._query}"
