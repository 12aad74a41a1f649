"""The interface every provider adapter implements, and what it is built from."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import ClassVar

import httpx

from llmproxy.server.domain import ChatRequest, ProviderEvent
from llmproxy.server.providers.keys import KeyPool


@dataclass(slots=True, frozen=True)
class ProviderSettings:
    """One configured provider, as the adapter sees it (secrets already resolved)."""

    name: str
    type: str
    base_url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # Provider-specific options from config (e.g. azure api_version, mock timings).
    options: dict[str, object] = field(default_factory=dict)


class Provider(abc.ABC):
    """Turns a normalised ChatRequest into provider calls and back into events.

    The HTTP client and the key pool are passed in, never created here, so one
    pooled client serves each upstream and tests can point adapters anywhere.
    """

    # False for adapters that make no HTTP calls (mock), so no client is built for them.
    uses_http: ClassVar[bool] = True

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        self.settings = settings
        self.client = client
        self.keys = keys

    @property
    def name(self) -> str:
        return self.settings.name

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        """Yield TextDelta events, then exactly one Finish; raise an UpstreamError on failure.

        A stream that ends without the provider's terminator must raise
        UpstreamUnavailableError, never end quietly.
        """

    async def list_models(self) -> list[str]:
        """Model ids the provider offers; empty when its API cannot list them."""
        return []

    async def health_check(self) -> None:
        """Raise an UpstreamError when the provider is unreachable or rejects our key."""
        await self.list_models()
