"""The call observers' `end` hooks run after the handler returns, innermost first, each once;
one that fails is logged with the request id and keeps neither the caller's status nor the
other hooks from theirs."""

from __future__ import annotations

import grpc

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.api.servicer import LLMProxyServicer
from llmproxy.server.app import build_app
from llmproxy.server.interceptors import build_interceptors
from llmproxy.server.interceptors.base import CallInterceptor
from llmproxy.server.interceptors.call import CallInfo
from llmproxy.v1 import llmproxy_pb2_grpc
from tests.interceptors.conftest import mock_settings


class Recorder(CallInterceptor):
    def __init__(self, name: str, ended: list[tuple[str, str | None]], *, fail: bool = False):
        super().__init__()
        self.name, self.ended, self.fail = name, ended, fail

    def end(self, call: CallInfo) -> None:
        self.ended.append((self.name, call.code))
        if self.fail:
            raise RuntimeError("a bug in a hook")


async def test_end_hooks_run_once_each_innermost_first_and_a_failing_one_is_logged(logs):
    ended: list[tuple[str, str | None]] = []
    hooks = [Recorder("outer", ended), Recorder("broken", ended, fail=True)]
    hooks.append(Recorder("inner", ended))
    app = build_app(mock_settings())
    server = grpc.aio.server(interceptors=[*build_interceptors(app), *hooks])
    servicer = LLMProxyServicer(app.queries, app.parallel, app.status)
    llmproxy_pb2_grpc.add_LLMProxyServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncLLMProxyClient(f"127.0.0.1:{port}") as client:
            result = await client.query("hi", model="fast")
            assert result.done.model == "fast"
            await client.status()
    finally:
        await server.stop(None)
    per_call = [("inner", "OK"), ("broken", "OK"), ("outer", "OK")]
    assert ended == per_call * 2  # the Query, then the Status
    failures = [r for r in logs.records if "Recorder.end failed" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].request_id == result.request_id  # type: ignore[attr-defined]
    assert [line["rpc"] for line in logs.access()] == ["Query", "Status"]
