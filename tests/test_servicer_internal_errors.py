"""Unexpected exceptions in unary RPCs become INTERNAL with the request id, never UNKNOWN."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmproxy.server.api import servicer as servicer_module
from llmproxy.server.app import build_app
from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc
from tests.support.running import settings_for

SECRET = "sk-live-do-not-leak"


class BrokenUsage:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def usage(self, where):
        raise RuntimeError(f"db password {SECRET}")


async def boom(*_args, **_kwargs):
    raise RuntimeError(f"exploded with {SECRET}")


@pytest.fixture
async def stub():
    app = build_app(settings_for())
    app.accounting = BrokenUsage()  # type: ignore[assignment]
    app.status.snapshot = boom  # type: ignore[method-assign]
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        yield llmproxy_pb2_grpc.LLMProxyStub(channel)
    finally:
        await channel.close()
        await app.stop(grace=1)


def assert_internal(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in (error.details() or "")
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.RequestInfo()
    assert any(d.Unpack(info) for d in status.details if d.Is(info.DESCRIPTOR))
    assert info.request_id and info.request_id in error.details()


async def test_status_failure_is_internal(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Status(pb.StatusRequest())
    assert_internal(caught.value)


async def test_get_usage_failure_is_internal(stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUsage(pb.GetUsageRequest())
    assert_internal(caught.value)


async def test_download_failure_is_internal(stub, monkeypatch):
    def broken_render(*_args):
        raise RuntimeError(f"renderer broke {SECRET}")

    monkeypatch.setattr(servicer_module, "render_document", broken_render)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Download(pb.DownloadRequest(content="x", format=pb.DOCUMENT_FORMAT_TXT))
    assert_internal(caught.value)
