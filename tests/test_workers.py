"""`llmproxy serve --workers N`: real supervisor and worker processes on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.cli import main as cli_main
from llmproxy.server.config import ConfigError, load_settings
from llmproxy.server.observability.multiprocess import build_registries
from llmproxy.server.workers import warn_about_per_worker_state
from tests.support.running import settings_for

CONFIG = """\
server: {{host: 127.0.0.1, grace_period_s: 5, health_check_interval_s: 0}}
providers:
  - {{name: quick, type: mock, options: {{ttft_ms: 1, tokens_per_s: 0}}}}
  - {{name: slow, type: mock, options: {{ttft_ms: 10, tokens_per_s: 40}}}}
models:
  - {{name: fast, provider: quick}}
  - {{name: slow, provider: slow}}{extra}
cache: {{exact: {{enabled: false}}, coalesce: false}}
ledger: {{backend: sqlite, path: "{ledger}", flush_interval_ms: 50}}
routing: {{watch_interval_s: 0}}
"""
# Connections a test opens; each lands on a worker by the kernel's hash of its
# address, so the chance that one worker gets all of them is 2 * 2**-24.
CONNECTIONS = 24


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Supervised:
    """The supervisor process and every JSON log line it and its workers wrote."""

    proc: asyncio.subprocess.Process
    grpc_port: int
    http_port: int
    lines: list[dict] = field(default_factory=list)
    text: list[str] = field(default_factory=list)

    async def line(self, match: Callable[[dict], bool], timeout: float = 20) -> dict:
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if match(line):
                        return line
                if self.proc.returncode is not None:
                    raise AssertionError(f"supervisor exited; log tail:\n{self.tail()}")
                await asyncio.sleep(0.05)

    def tail(self) -> str:
        return "\n".join(self.text[-30:])

    def worker_pid(self, index: int) -> int:
        started = [x for x in self.lines if x["message"] == "worker started"]
        return [x["pid"] for x in started if x["worker"] == index][-1]

    def served_by(self, model: str) -> set[int]:
        return {
            x["worker"]
            for x in self.lines
            if x["logger"] == "llmproxy.access" and x.get("model") == model
        }


@contextlib.asynccontextmanager
async def supervised(config: Path, *args: str) -> AsyncIterator[Supervised]:
    grpc_port, http_port = free_ports(2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llmproxy.client.cli", "serve", "--config", str(config),
        "--workers", "2", "--grpc-port", str(grpc_port), "--http-port", str(http_port), *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # Its own process group: cleanup reaches the workers even if the test fails.
        start_new_session=True,
    )  # fmt: skip
    gateway = Supervised(proc, grpc_port, http_port)
    reader = asyncio.create_task(read_logs(proc, gateway))
    try:
        yield gateway
    finally:
        if proc.returncode is None:  # a failed test: drain, so the metrics dir goes too
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        reader.cancel()


async def read_logs(proc: asyncio.subprocess.Process, into: Supervised) -> None:
    assert proc.stderr is not None
    async for raw in proc.stderr:
        text = raw.decode(errors="replace").rstrip()
        into.text.append(text)
        if text.startswith("{"):
            into.lines.append(orjson.loads(text))


def write_config(tmp_path: Path, extra_model: bool = False) -> Path:
    extra = "\n  - {name: extra, provider: quick}" if extra_model else ""
    path = tmp_path / "llmproxy.yaml"
    path.write_text(CONFIG.format(extra=extra, ledger=tmp_path / "usage.db"))
    return path


async def query_on_new_connection(port: int, prompt: str, model: str) -> int:
    """One Query on its own TCP connection (grpc would otherwise share one); its tokens."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
    )
    async with AsyncLLMProxyClient(channel=channel, timeout=10) as client:
        result = await client.query(prompt, model=model)
    return result.done.metadata.output_tokens


async def scrape(port: int) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        return await response.text()


async def is_dir(path: str) -> bool:
    return await asyncio.to_thread(os.path.isdir, path)


def sample(exposition: str, prefix: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in exposition.splitlines() if x.startswith(prefix))


async def stopped(gateway: Supervised, timeout: float = 15) -> int:
    gateway.proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(gateway.proc.wait(), timeout)


async def test_two_workers_serve_one_port_sum_metrics_and_share_the_ledger(tmp_path):
    async with supervised(write_config(tmp_path)) as gw:
        await gw.line(lambda x: x["message"] == "all workers serving")
        tokens = await asyncio.gather(
            *(query_on_new_connection(gw.grpc_port, f"q{i}", "fast") for i in range(CONNECTIONS))
        )
        assert all(t > 0 for t in tokens)
        # Counters add up over the workers, whichever one answers the scrape.
        query_total = 'llmproxy_requests_total{code="OK",model="fast",provider="quick",rpc="Query"}'
        for _ in range(50):
            metrics = await scrape(gw.http_port)
            if sample(metrics, query_total) == CONNECTIONS:
                break
            await asyncio.sleep(0.1)
        assert sample(metrics, query_total) == CONNECTIONS
        assert 'llmproxy_active_requests{rpc="Query"} 0.0' in metrics
        await gw.line(lambda x: gw.served_by("fast") == {0, 1}, timeout=5)
        metrics_dir = (await gw.line(lambda x: x["message"] == "starting workers"))["metrics_dir"]
        assert await is_dir(metrics_dir)
        assert await stopped(gw) == 0
    assert not await is_dir(metrics_dir)
    # Both workers wrote their records into the one SQLite file.
    with contextlib.closing(sqlite3.connect(tmp_path / "usage.db")) as db:
        assert db.execute("SELECT count(*) FROM llmproxy_usage").fetchone()[0] == CONNECTIONS


async def test_sigterm_lets_an_in_flight_stream_finish_and_exits_zero(tmp_path):
    async with supervised(write_config(tmp_path)) as gw:
        await gw.line(lambda x: x["message"] == "all workers serving")
        async with AsyncLLMProxyClient(f"127.0.0.1:{gw.grpc_port}") as client:
            # ~12 words at 40/s: still streaming when the drain starts.
            in_flight = asyncio.create_task(client.query("a b c", model="slow", max_tokens=12))
            await asyncio.sleep(0.15)
            started = asyncio.get_running_loop().time()
            gw.proc.send_signal(signal.SIGTERM)
            result = await asyncio.wait_for(in_flight, 5)
            assert result.done.metadata.output_tokens == 12
            assert await asyncio.wait_for(gw.proc.wait(), 10) == 0
            assert asyncio.get_running_loop().time() - started < 5  # the grace period
        stops = [x for x in gw.lines if x["message"] == "worker stopped"]
        assert sorted(x["worker"] for x in stops) == [0, 1]
        assert all(x["exit"] == "exit code 0" for x in stops)


async def test_a_killed_worker_is_restarted_with_the_reloaded_routing(tmp_path):
    config = write_config(tmp_path)
    async with supervised(config) as gw:
        await gw.line(lambda x: x["message"] == "all workers serving")
        # SIGHUP reaches every worker; each reloads the edited file.
        write_config(tmp_path, extra_model=True)
        gw.proc.send_signal(signal.SIGHUP)
        reloaded = {0, 1}
        await gw.line(
            lambda _: (
                {x["worker"] for x in gw.lines if x["message"] == "routing table reloaded"}
                == reloaded
            )
        )
        old_pid = gw.worker_pid(0)
        os.kill(old_pid, signal.SIGKILL)
        restarted = await gw.line(
            lambda x: x["message"] == "worker serving" and x["worker"] == 0 and x["pid"] != old_pid
        )
        assert any(
            x["message"].startswith("worker exited unexpectedly") and x["exit"] == "SIGKILL"
            for x in gw.lines
        )
        # The restarted worker serves the reloaded table too: no NOT_FOUND for `extra`.
        tokens = await asyncio.gather(
            *(query_on_new_connection(gw.grpc_port, f"e{i}", "extra") for i in range(CONNECTIONS))
        )
        assert all(t > 0 for t in tokens)
        await gw.line(lambda _: gw.served_by("extra") == {0, 1}, timeout=5)
        assert restarted["pid"] == gw.worker_pid(0)
        assert await stopped(gw) == 0


async def test_the_supervisor_gives_up_when_workers_cannot_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with supervised(write_config(tmp_path), "--grpc-port", str(port)) as gw:
            assert await asyncio.wait_for(gw.proc.wait(), 30) == 1
            await gw.line(lambda x: "failed to start" in x["message"], timeout=2)
            starting = await gw.line(lambda x: x["message"] == "starting workers")
            assert not await is_dir(starting["metrics_dir"])


@pytest.mark.parametrize("key", ["grpc_port", "http_port"])
def test_workers_need_fixed_ports(key, capsys):
    with pytest.raises(ConfigError, match=rf"server\.{key} must be a fixed port"):
        load_settings(overrides={"server": {"workers": 2, "grpc_port": 7000, key: 0}})
    assert cli_main(["serve", "--workers", "2", f"--{key.replace('_', '-')}", "0"]) == 2
    assert f"server.{key}" in capsys.readouterr().err


def test_one_worker_may_use_port_zero_and_zero_workers_means_one_per_cpu():
    assert load_settings(overrides={"server": {"grpc_port": 0}}).server.worker_count == 1
    many = load_settings(overrides={"server": {"workers": 0}})
    assert many.server.worker_count == len(os.sched_getaffinity(0))


def test_one_process_keeps_one_registry():
    exposed, instruments = build_registries(settings_for().server)
    assert exposed is instruments


def test_per_worker_state_is_named_in_one_warning(caplog):
    config = {
        "providers": [{"name": "mock", "type": "mock"}],
        "models": [{"name": "m", "provider": "mock"}],
        "rate_limits": {"default": {"requests_per_minute": 60}},
        "budgets": [{"key_id": "team", "limit_usd": 5}],
        "server": {"workers": 2, "grpc_port": 7000, "http_port": -1},
    }
    with caplog.at_level(logging.WARNING, logger="llmproxy.server.workers"):
        warn_about_per_worker_state(settings_for(config))
    [record] = caplog.records
    assert "rate_limits.backend: memory" in record.message
    assert "budget_store.backend: memory" in record.message
    assert "cache.exact.backend: memory" in record.message
    caplog.clear()
    shared = {
        **config,
        "rate_limits": {**config["rate_limits"], "backend": "redis"},
        "budget_store": {"backend": "redis"},
        "cache": {"exact": {"backend": "redis"}},
    }
    warn_about_per_worker_state(settings_for(shared))
    assert not caplog.records
