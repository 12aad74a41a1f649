"""What every adapter test module shares: fixtures, building and calling an adapter, and the
checks each provider repeats (typed errors, key failover, hung upstreams, the gRPC Query)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable

import grpc
import httpx
import pytest
from aiohttp import web
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
from llmproxy.server.errors import UpstreamError, UpstreamTimeoutError
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.http import HttpClientSettings, build_http_client
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.registry import provider_class
from llmproxy.server.providers.sse import SSEParser
from tests.support.upstream import FakeUpstream, serve_upstream

# --- fixtures ------------------------------------------------------------------------


def upstream_fixture(app: Callable[[], web.Application]):
    """An `upstream` fixture: a fresh `app()` served on loopback for each test."""

    @pytest.fixture
    async def upstream() -> AsyncIterator[FakeUpstream]:
        async with serve_upstream(app()) as fake:
            yield fake

    return upstream


def http_fixture(read_timeout_s: float = 0.5):
    """An `http` fixture: the gateway's own pooled upstream client, closed after the test."""

    @pytest.fixture
    async def http() -> AsyncIterator[httpx.AsyncClient]:
        client = build_http_client(HttpClientSettings(read_timeout_s=read_timeout_s))
        yield client
        await client.aclose()

    return http


# --- building and calling ----------------------------------------------------------------


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


async def broken(provider: Provider, request: ChatRequest, error_type: type[UpstreamError]) -> str:
    """The text a stream delivered before it failed with `error_type` (it must never Finish)."""
    seen: list[str] = []
    with pytest.raises(error_type):
        async for event in provider.stream(request):
            assert isinstance(event, TextDelta), "a broken stream must never Finish"
            seen.append(event.text)
    return "".join(seen)


def replay_sse(raw: bytes, split: int, parse_event: Callable[..., str], state: object) -> str:
    """Feed a recorded SSE stream to an adapter's `parse_event` in `split`-byte reads."""
    parser, texts = SSEParser(), []
    for i in range(0, len(raw), split):
        for event in parser.feed(raw[i : i + split]):
            texts.append(parse_event(event, state, provider="p"))
    return "".join(texts)


# --- checks every adapter repeats ------------------------------------------------------------


async def refused(
    provider: Provider,
    request: ChatRequest,
    error_type: type[UpstreamError],
    *,
    status: int,
    secret: str | None = None,
) -> UpstreamError:
    """The error a call ends in: exactly `error_type`, naming status and provider, not the key."""
    with pytest.raises(error_type) as caught:
        await collect(provider, request)
    error = caught.value
    assert type(error) is error_type
    assert error.status == status and error.provider == provider.name
    if secret is not None:
        assert secret not in str(error)
    return error


async def times_out(provider: Provider, upstream: FakeUpstream) -> None:
    """A `hang` upstream (headers, then silence) ends in a timeout, and the socket is closed."""
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError):
        await collect(provider, chat("hang"))
    assert time.perf_counter() - started < 3
    await asyncio.wait_for(upstream.event("disconnected:hang").wait(), 2)


async def fails_over(
    provider: Provider, upstream: FakeUpstream, text: str, header: str, sent: list[str]
) -> None:
    """Built with a refused key-0 and a good key-1: every call answers, key-0 rests, and the
    upstream saw `sent` as `header` (key-0 once, then only key-1)."""
    for _ in range(2):
        got, _, _ = await collect(provider, chat())
        assert got == text
    assert [r.headers[header] for r in upstream.requests] == sent
    assert provider.keys.cooling() == ["key-0"]


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


def exact_answer(result, text: str, input_tokens: int, output_tokens: int) -> None:
    """A Query result carries the fake's text and token counts, not estimates."""
    assert result.text == text
    meta = result.done.metadata
    assert (meta.input_tokens, meta.output_tokens) == (input_tokens, output_tokens)
    assert not result.done.usage.estimated


async def query_fails(
    client, model: str, code: grpc.StatusCode, secret: str | None = None
) -> grpc.aio.AioRpcError:
    """A Query for `model` fails with `code`, and the details never show `secret`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model=model)
    assert caught.value.code() == code
    if secret is not None:
        assert secret not in caught.value.details()
    return caught.value
