"""Helpers the OpenAI-family, Mistral and Ollama adapter tests share: build, call, collect."""

from __future__ import annotations

from collections.abc import Iterable

import httpx
from pydantic import SecretStr

from llmproxy.server.domain import (
    ChatRequest,
    Finish,
    Message,
    Parameters,
    ProviderEvent,
    Role,
    TextDelta,
)
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.registry import provider_class


def chat(model: str = "ok", *messages: tuple[str, str], **params) -> ChatRequest:
    msgs = messages or (("user", "Say hello"),)
    return ChatRequest(
        model=model,
        messages=tuple(Message(Role(r), c) for r, c in msgs),
        params=Parameters(**params),
    )


def make(
    type_: str,
    base_url: str,
    client: httpx.AsyncClient,
    keys: Iterable[str] = (),
    *,
    name: str = "p",
    headers: dict[str, str] | None = None,
    **options,
) -> Provider:
    settings = ProviderSettings(
        name=name, type=type_, base_url=base_url, headers=headers or {}, options=options
    )
    pool = KeyPool([SecretStr(k) for k in keys])
    return provider_class(type_)(settings, client, pool)


async def collect(provider: Provider, request: ChatRequest) -> tuple[str, Finish, int]:
    """(answer text, the Finish, how many TextDelta events) of one call."""
    events: list[ProviderEvent] = [e async for e in provider.stream(request)]
    assert events and isinstance(events[-1], Finish), events
    assert all(isinstance(e, TextDelta) for e in events[:-1]), events
    assert sum(isinstance(e, Finish) for e in events) == 1
    text = "".join(e.text for e in events[:-1])  # type: ignore[union-attr]
    return text, events[-1], len(events) - 1  # type: ignore[return-value]


async def partial(provider: Provider, request: ChatRequest, sink: list[str]) -> None:
    """Stream into `sink` until the adapter raises (for errors that arrive mid-stream)."""
    async for event in provider.stream(request):
        if isinstance(event, TextDelta):
            sink.append(event.text)


def gateway_config(provider: dict, models: list[str]) -> dict:
    """A gateway config with one provider and one model per upstream model name."""
    return {
        "providers": [provider],
        "models": [
            {
                "name": m,
                "provider": provider["name"],
                "upstream_model": m,
                "task_types": ["generation"],
            }
            for m in models
        ],
    }
