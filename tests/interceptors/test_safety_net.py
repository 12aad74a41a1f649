"""An exception raised while the interceptors pick a call's handler: the caller gets INTERNAL
with a request id and a generic message, the log gets the stack. A real server with the real
chain, one broken interceptor added innermost (where auth and rate limits sit)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.api.servicer import LLMProxyServicer
from llmproxy.server.app import App, build_app
from llmproxy.server.interceptors import build_interceptors
from llmproxy.server.interceptors.safety_net import shape_of
from llmproxy.v1 import llmproxy_pb2_grpc
from tests.interceptors.conftest import mock_settings

SECRET = "redis://:secret@host"


class BrokenInterceptor(grpc.aio.ServerInterceptor):
    """Fails before any handler exists, as a bug in a limiter's lookup would."""

    def __init__(self) -> None:
        self.broken = True

    async def intercept_service(self, continuation, handler_call_details):
        if self.broken:
            raise RuntimeError(SECRET)
        return await continuation(handler_call_details)


@contextlib.asynccontextmanager
async def serving(broken: BrokenInterceptor) -> AsyncIterator[tuple[str, App]]:
    app = build_app(mock_settings())
    server = grpc.aio.server(interceptors=[*build_interceptors(app), broken])
    servicer = LLMProxyServicer(app.queries, app.parallel, app.status)
    llmproxy_pb2_grpc.add_LLMProxyServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", app
    finally:
        await server.stop(None)


def request_id_of(error: grpc.aio.AioRpcError) -> str:
    for detail in rpc_status.from_call(error).details:
        if detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            return info.request_id
    raise AssertionError("no RequestInfo in the status")


async def test_an_interceptor_failing_before_the_handler_is_internal_with_the_stack_logged(logs):
    broken = BrokenInterceptor()
    async with serving(broken) as (target, app), AsyncLLMProxyClient(target) as client:
        errors = []
        # Each call shape: unary (Status), server-streaming (Query), and another service.
        for call in (
            client.status,
            lambda: client.query("hi", model="fast"),
            lambda: health_pb2_grpc.HealthStub(client.channel).Check(
                health_pb2.HealthCheckRequest()
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            errors.append(caught.value)
        broken.broken = False  # the same server, healthy again: the net is out of the way
        assert (await client.query("hi", model="fast")).done.model == "fast"
    for error in errors:
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (error.details() or "")
        assert "secret" not in str(error.trailing_metadata())
        assert error.details() == f"internal error (request_id={request_id_of(error)})"
    failures = [r for r in logs.records if r.name == "llmproxy.server.interceptors.safety_net"]
    assert len(failures) == len(errors)
    for error, record in zip(errors, failures, strict=True):
        # The log line carries the caller's request id and the stack that leads to the bug.
        assert record.request_id == request_id_of(error)  # type: ignore[attr-defined]
        assert isinstance(record.exc_info[1], RuntimeError)  # type: ignore[index]
    formatted = "\n".join(line for line in logs.lines if "safety_net" in line)
    assert "Traceback" in formatted and "in intercept_service" in formatted
    # The observers recorded the refused calls too, under the ids their callers were given.
    refused = [line for line in logs.access() if line["code"] == "INTERNAL"]
    assert [line["rpc"] for line in refused] == ["Status", "Query", "Check"]
    assert [line["request_id"] for line in refused] == [request_id_of(e) for e in errors]
    assert refused[1]["requested_model"] == "fast"
    sample = app.registry.get_sample_value
    labels = {"model": "fast", "provider": "", "rpc": "Query", "code": "INTERNAL"}
    assert sample("llmproxy_requests_total", labels) == 1


@pytest.mark.parametrize(
    ("method", "shape"),
    [
        ("/llmproxy.v1.LLMProxy/Status", (False, False)),
        ("/llmproxy.v1.LLMProxy/Query", (False, True)),
        ("/grpc.health.v1.Health/Watch", (False, True)),
        ("/no.such.Service/Method", (True, True)),  # reads and sends nothing: fits any call
        ("not a method", (True, True)),
    ],
)
def test_the_refusal_has_the_methods_call_shape(method, shape):
    handler = shape_of(method)
    assert (handler.request_streaming, handler.response_streaming) == shape
