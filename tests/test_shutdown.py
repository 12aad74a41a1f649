"""Graceful drain: health flips first, new RPCs are refused, in-flight streams finish."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.client import build_query_request
from llmproxy.server.app import build_app
from tests.support.running import settings_for

SLOW = {
    "providers": [{"name": "mock", "type": "mock", "options": {"ttft_ms": 50, "tokens_per_s": 40}}],
    "models": [{"name": "slow", "provider": "mock"}],
}


async def health_status(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service="llmproxy.v1.LLMProxy"))
        return response.status


async def test_drain_finishes_in_flight_streams_and_refuses_new_ones():
    app = build_app(settings_for(SLOW, server={"drain_delay_s": 0.3, "grace_period_s": 5}))
    await app.start()
    client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
    try:
        assert await health_status(app.grpc_port) == health_pb2.HealthCheckResponse.SERVING
        # ~12 words at 40/s: the stream is still going when the drain starts.
        in_flight = asyncio.create_task(client.query("one two three", model="slow", max_tokens=12))
        await asyncio.sleep(0.15)
        stopping = asyncio.create_task(app.stop())
        await asyncio.sleep(0.1)
        assert await health_status(app.grpc_port) == health_pb2.HealthCheckResponse.NOT_SERVING
        await asyncio.sleep(0.3)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.query("late", model="slow", timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        result = await in_flight
        assert result.done.metadata.output_tokens == 12
        await stopping
    finally:
        await client.close()


async def test_streams_longer_than_the_grace_period_are_cut_at_its_end():
    app = build_app(settings_for(SLOW, server={"grace_period_s": 0.3}))
    await app.start()
    client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
    try:
        call = client.stream(build_query_request("x", model="slow", max_tokens=200))
        await call.read()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await app.stop()
        assert loop.time() - started < 1.5
        with pytest.raises(grpc.aio.AioRpcError):
            while True:
                if await call.read() == grpc.aio.EOF:
                    break
        assert all(d.stats.in_flight == 0 for d in app.catalog.deployments.values())
    finally:
        await client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_drains_a_real_server_process(tmp_path):
    config = tmp_path / "llmproxy.yaml"
    config.write_text(
        "server: {host: 127.0.0.1, grace_period_s: 5}\n"
        "providers: [{name: mock, type: mock, options: {ttft_ms: 10, tokens_per_s: 40}}]\n"
        "models: [{name: slow, provider: mock}]\n"
        "ledger: {backend: none}\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmproxy.client.cli",
        "serve",
        "--config",
        str(config),
        "--grpc-port",
        str(port),
        "--http-port",
        "-1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    client = AsyncLLMProxyClient(f"127.0.0.1:{port}")
    try:
        for _ in range(100):
            try:
                await client.status(timeout=0.5)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        in_flight = asyncio.create_task(client.query("a b c", model="slow", max_tokens=12))
        await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        result = await asyncio.wait_for(in_flight, 5)
        assert result.done.metadata.output_tokens == 12
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        logs = (await proc.stderr.read()).decode()
        assert "draining" in logs and "llmproxy stopped" in logs
    finally:
        await client.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
