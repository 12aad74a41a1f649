"""The Python clients: every call carries the deadline and the key as configured, and the
blocking client answers like the async one against a running gateway."""

from __future__ import annotations

import asyncio

import pytest

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.client import LLMProxyClient, build_query_request
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.support.running import running_app, settings_for


class RecordingStub:
    """Stands in for the generated stub: records each call's options, answers nothing."""

    def __init__(self, answer=None) -> None:
        self.calls: list[tuple[str, float | None, list[tuple[str, str]]]] = []
        self.answer = answer

    def __getattr__(self, rpc: str):
        def call(request, *, timeout, metadata):
            self.calls.append((rpc, timeout, metadata))
            return self.answer

        return call


def sync_calls(client: LLMProxyClient) -> None:
    client.stream(pb.QueryRequest(), metadata=[("x-trace", "1")])
    client.parallel(pb.ParallelQueryRequest(), timeout=9)
    client.status(refresh=True)
    client.download("text")
    client.usage(model="m")


@pytest.mark.parametrize(
    ("header", "sent"),
    [("authorization", ("authorization", "Bearer sk-1")), ("x-api-key", ("x-api-key", "sk-1"))],
)
def test_every_sync_call_carries_the_deadline_and_the_key(header, sent):
    client = LLMProxyClient("127.0.0.1:9", api_key="sk-1", api_key_header=header, timeout=5)
    client.stub = RecordingStub()
    sync_calls(client)
    client.close()
    assert client.stub.calls == [
        ("Query", 5, [sent, ("x-trace", "1")]),
        ("ParallelQuery", 9, [sent]),
        ("Status", 5, [sent]),
        ("Download", 5, [sent]),
        ("GetUsage", 5, [sent]),
    ]


async def test_every_async_call_carries_the_deadline_and_the_key():
    async def answer():
        return None

    client = AsyncLLMProxyClient("127.0.0.1:9", timeout=4)
    client.stub = RecordingStub()
    client.stream(pb.QueryRequest(), timeout=2)
    client.parallel(pb.ParallelQueryRequest(), metadata=[("x-trace", "1")])
    for call in (client.status, client.download, client.usage):
        client.stub.answer = answer()
        await (call("text") if call == client.download else call())
    await client.close()
    assert client.stub.calls == [
        ("Query", 2, []),
        ("ParallelQuery", 4, [("x-trace", "1")]),
        ("Status", 4, []),
        ("Download", 4, []),
        ("GetUsage", 4, []),
    ]


@pytest.mark.parametrize("client_type", [LLMProxyClient, AsyncLLMProxyClient])
async def test_an_unknown_key_header_is_refused(client_type):
    with pytest.raises(ValueError, match="api_key_header must be one of"):
        client_type("127.0.0.1:9", api_key_header="cookie")


async def test_blocking_client_against_a_running_gateway():
    async with running_app(settings_for()) as app:

        def use() -> tuple:
            with LLMProxyClient(f"127.0.0.1:{app.grpc_port}", timeout=10) as client:
                result = client.query("Hello sync", model="mock-fast", max_tokens=40)
                streamed = list(client.stream(build_query_request("again", model="mock-fast")))
                return result, streamed, client.status(), client.download("Hi").filename

        result, streamed, status, filename = await asyncio.to_thread(use)
    assert "You asked: Hello sync." in result.text and result.request_id
    assert result.done.metadata.output_tokens > 0
    assert streamed[0].WhichOneof("event") == "start"
    assert streamed[-1].WhichOneof("event") == "done"
    assert {m.name for m in status.models} >= {"mock-fast", "mock-smart"}
    assert filename
