"""Providers (who we call) and models (what callers name)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from llmproxy.server.config.base import Section
from llmproxy.server.config.server import HttpClientConfig


class ProviderConfig(Section):
    name: str = Field(min_length=1)
    type: str = Field(min_length=1)
    base_url: str = ""
    api_keys: list[SecretStr] = Field(default_factory=list)
    headers: dict[str, str] = Field(default_factory=dict)
    # Provider-specific knobs, e.g. azure `api_version`, mock `ttft_ms`.
    options: dict[str, Any] = Field(default_factory=dict)
    # Overrides the global http_client settings for this upstream.
    http: HttpClientConfig | None = None


class Price(Section):
    """USD per million tokens."""

    input_per_mtok: float = Field(0.0, ge=0, allow_inf_nan=False)
    output_per_mtok: float = Field(0.0, ge=0, allow_inf_nan=False)
    # None: cached input tokens cost the same as other input tokens.
    cached_input_per_mtok: float | None = Field(None, ge=0, allow_inf_nan=False)


class ModelConfig(Section):
    name: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    # The provider's own model id; defaults to `name`.
    upstream_model: str = ""
    task_types: list[str] = Field(default_factory=list)
    context_window: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    price: Price | None = None

    @property
    def upstream(self) -> str:
        return self.upstream_model or self.name
