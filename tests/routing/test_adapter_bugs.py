"""A bug inside a provider adapter (KeyError, TypeError...) is an upstream failure: logged
with its stack, counted against the deployment, and fallen back from; its text, which may
hold a key, never reaches the caller. Through a real gateway and client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.client import build_query_request
from llmproxy.server.app import App, build_app
from llmproxy.server.domain import (
    ChatRequest,
    Finish,
    FinishReason,
    ProviderEvent,
    TextDelta,
    Usage,
)
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from tests.support.running import settings_for

SECRET = "sk-live-4f9c2e-do-not-leak"


class BuggyProvider(Provider):
    """The model name picks the bug: `broken` raises at once, `broken-mid` after some
    text, `unfinished` ends without a Finish; anything else answers."""

    uses_http = False

    def __init__(self) -> None:
        super().__init__(ProviderSettings(name="memory", type="mock"), None, KeyPool([]))
        self.calls: list[str] = []

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        self.calls.append(request.model)
        if request.model == "broken":
            raise KeyError(SECRET)
        if request.model == "unfinished":
            return
        yield TextDelta("partial" if request.model == "broken-mid" else "hello")
        if request.model == "broken-mid":
            raise TypeError(SECRET)
        yield Finish(FinishReason.STOP, "stop", Usage(3, 1))


MODELS = ["broken", "broken-mid", "unfinished", "good"]


@contextlib.asynccontextmanager
async def gateway(
    *members: str, max_attempts: int = 1
) -> AsyncIterator[tuple[App, AsyncLLMProxyClient, BuggyProvider]]:
    settings = settings_for(
        {
            "providers": [{"name": "memory", "type": "mock"}],
            "models": [{"name": m, "provider": "memory", "upstream_model": m} for m in MODELS],
            "groups": [{"name": "g", "members": [{"model": m} for m in members]}],
            "resilience": {
                "retries": {"max_attempts": max_attempts, "backoff_initial_ms": 1},
                "circuit_breaker": {"consecutive_failures": 50},
            },
        }
    )
    app = build_app(settings)
    provider = BuggyProvider()
    for deployment in app.catalog.deployments.values():
        deployment.provider = provider
    await app.start()
    client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
    try:
        yield app, client, provider
    finally:
        await client.close()
        await app.stop(grace=1)


def adapter_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmproxy.server.core.executor"]


def error_info(error: grpc.aio.AioRpcError) -> tuple[str, str]:
    reason = request_id = ""
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            request = error_details_pb2.RequestInfo()
            detail.Unpack(request)
            request_id = request.request_id
    return reason, request_id


@pytest.mark.parametrize("primary", ["broken", "unfinished"])
async def test_a_buggy_adapter_falls_back_and_counts_as_a_failure(primary, caplog):
    async with gateway(primary, "good") as (app, client, provider):
        result = await client.query("hi", model="g")
        bad = app.catalog.deployments[primary]
        good = app.catalog.deployments["good"]
    assert provider.calls == [primary, "good"]
    assert (result.done.model, result.text) == ("good", "hello")
    assert [(a.model, a.error_reason) for a in result.done.attempts] == [
        (primary, "UPSTREAM_PROTOCOL_ERROR"),
        ("good", ""),
    ]
    # A failure, not a cancellation: the breaker and the stats both saw it.
    assert bad.breaker.consecutive == 1 and bad.breaker.probes == 0
    assert bad.stats.last_error == "UPSTREAM_PROTOCOL_ERROR"
    assert [ok for _, ok in bad.stats.outcomes] == [False]
    assert bad.stats.in_flight == 0 and good.stats.in_flight == 0
    assert good.breaker.consecutive == 0
    assert SECRET not in str(result.events)
    [record] = adapter_logs(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.request_id == result.request_id  # type: ignore[attr-defined]


async def test_a_buggy_adapter_is_not_retried_on_the_same_deployment():
    # Retries are for the upstream's transient faults; our bug fails the same way again.
    async with gateway("broken", "good", max_attempts=3) as (app, client, provider):
        result = await client.query("hi", model="g")
        bad = app.catalog.deployments["broken"]
    assert provider.calls == ["broken", "good"]
    assert result.text == "hello"
    assert bad.breaker.consecutive == 1


async def test_without_a_fallback_the_caller_gets_unavailable_and_a_generic_message(caplog):
    async with gateway("broken") as (app, client, _):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="broken")
        broken = app.catalog.deployments["broken"]
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error.details() == "memory: the adapter failed"
    reason, request_id = error_info(error)
    assert reason == "UPSTREAM_PROTOCOL_ERROR"
    assert SECRET not in str(error.trailing_metadata())
    assert broken.breaker.consecutive == 1 and broken.stats.in_flight == 0
    # The stack is in the log, once, under the request id the caller was given.
    [record] = adapter_logs(caplog)
    assert record.request_id == request_id  # type: ignore[attr-defined]
    assert isinstance(record.exc_info[1], KeyError)  # type: ignore[index]
    assert "raise KeyError(SECRET)" in caplog.text


async def test_a_bug_after_text_has_reached_the_caller_ends_the_stream_without_fallback():
    async with gateway("broken-mid", "good") as (app, client, provider):
        events = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for event in client.stream(build_query_request("hi", model="g")):
                events.append(event)
        broken = app.catalog.deployments["broken-mid"]
    assert provider.calls == ["broken-mid"]
    assert "".join(e.delta.text for e in events) == "partial"
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert SECRET not in (caught.value.details() or "")
    assert broken.breaker.consecutive == 1 and broken.stats.in_flight == 0
