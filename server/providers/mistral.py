"""Mistral's chat completions API: its field names, its stream's usage and finish reasons.

`base_url` is the server root (default https://api.mistral.ai; a trailing /v1 is
tolerated). Options: `safe_prompt` (bool, prepend Mistral's safety prompt).
Mistral refuses unknown fields with a 422, so only its documented fields are sent:
`random_seed` instead of `seed`, and no `stream_options` (usage comes in the last chunk).
Its error bodies (`{"object": "error", ...}`, 422 `detail` lists, its gateway's bare
`{"message": ...}`) are all read by the shared OpenAI-style parser.
"""

from __future__ import annotations

from typing import Any

import httpx

from llmproxy.server.domain import ChatRequest
from llmproxy.server.errors import UpstreamUnavailableError
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.http_chat import option
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.openai_compat import (
    ChunkDecoder,
    OpenAICompatibleProvider,
    build_body,
    parse_usage,
)


def text_of(content: Any) -> str:
    """Delta content is a string, or a list of chunks of which only `text` ones are answer."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            c.get("text", "") for c in content if isinstance(c, dict) and c.get("type") == "text"
        )
    return ""


class MistralDecoder(ChunkDecoder):
    __slots__ = ()

    def read_chunk(self, obj: dict[str, Any], texts: list[str]) -> None:
        if obj.get("object") == "error":
            raise self.stream_error(obj)
        for choice in obj.get("choices") or ():
            delta = choice.get("delta")
            if delta and (text := text_of(delta.get("content"))):
                texts.append(text)
            if reason := choice.get("finish_reason"):
                if reason == "error":
                    # Documented finish reason: generation failed part-way.
                    raise UpstreamUnavailableError(
                        f"{self.provider}: generation failed mid-stream (finish_reason=error)",
                        provider=self.provider,
                    )
                self.finish_raw = "length" if reason == "model_length" else reason
        if usage := obj.get("usage"):
            self.usage = parse_usage(usage)


class MistralProvider(OpenAICompatibleProvider):
    default_base_url = "https://api.mistral.ai"

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self._safe_prompt = option(settings, "safe_prompt", bool, False)

    def url(self, request: ChatRequest) -> str:
        return self.base_url + "/v1/chat/completions"

    def build_body(self, request: ChatRequest) -> dict[str, Any]:
        body = build_body(request, include_usage=False)
        if "seed" in body:
            body["random_seed"] = body.pop("seed")
        if self._safe_prompt:
            body["safe_prompt"] = True
        return body

    def new_decoder(self) -> MistralDecoder:
        return MistralDecoder(self.name, self.stream_error)

    def models_url(self) -> str | None:
        return self.base_url + "/v1/models"
