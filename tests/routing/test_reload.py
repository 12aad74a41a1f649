"""Config reload: atomic under load, from SIGHUP and from file changes; invalid files rejected."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.app import build_app
from llmproxy.server.config import load_settings
from tests.routing.scripted import ok, routing_config

SERVER = {"host": "127.0.0.1", "grpc_port": 0, "http_port": -1, "grace_period_s": 1}


def write(path: Path, config: dict) -> None:
    # Write then rename, as editors and config-map updates do: the file is never half-written.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config))
    os.replace(tmp, path)


def config_for(upstream, members: list[str], *, watch_s: float = 0.0, **extra) -> dict:
    config = routing_config(
        upstream.base_url,
        ["a", "b", "c"],
        groups=[{"name": "g", "members": [{"model": m} for m in members]}],
        routing={"watch_interval_s": watch_s},
        **extra,
    )
    return {"server": SERVER, "ledger": {"backend": "none"}, **config}


@contextlib.asynccontextmanager
async def reloadable(path: Path):
    app = build_app(load_settings(path), config_path=str(path))
    await app.start()
    client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
    try:
        yield app, client
    finally:
        await client.close()
        await app.stop(grace=1)


async def served_by(client, model: str = "g") -> str:
    return (await client.query("hi", model=model)).done.model


async def served_is(client, model: str) -> bool:
    return await served_by(client) == model


async def is_closed(client) -> bool:
    return client.is_closed


async def eventually(check, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)


async def test_reload_under_load_fails_no_request(upstream, tmp_path):
    upstream.script("a", ok(gap_s=0.004))
    upstream.script("b", ok(gap_s=0.004))
    upstream.script("c", ok(gap_s=0.004))
    path = tmp_path / "llmproxy.yaml"
    write(path, config_for(upstream, ["a"], watch_s=0.05))
    async with reloadable(path) as (app, client):
        served: Counter[str] = Counter()
        failures: list[BaseException] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    served[await served_by(client)] += 1
                except Exception as error:  # every failure is a test failure
                    failures.append(error)

        workers = [asyncio.create_task(load()) for _ in range(6)]
        await asyncio.sleep(0.2)
        # 1: an explicit reload (what SIGHUP triggers) that re-points the group.
        write(path, config_for(upstream, ["b"], watch_s=0.05))
        assert await app.reloader.reload()
        await asyncio.sleep(0.2)
        # 2: the file watcher picks up an edit on its own.
        write(path, config_for(upstream, ["c"], watch_s=0.05))
        await eventually(lambda: served_is(client, "c"))
        # 3: a provider change rebuilds its client while streams are in flight on the old one.
        changed = config_for(upstream, ["a", "b"], watch_s=0.05)
        changed["providers"][0]["headers"] = {"x-config-version": "4"}
        write(path, changed)
        await eventually(lambda: served_is(client, "a"))
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert served["a"] > 0 and served["b"] > 0 and served["c"] > 0
    assert sum(served.values()) > 50


async def test_unchanged_providers_keep_their_clients_and_deployments_their_history(
    upstream, tmp_path
):
    path = tmp_path / "llmproxy.yaml"
    write(path, config_for(upstream, ["a"]))
    async with reloadable(path) as (app, client):
        await served_by(client)
        before = app.queries.router.catalog
        deployment = before.deployments["a"]
        client_before = deployment.provider.client
        write(path, config_for(upstream, ["b", "a"]))
        assert await app.reloader.reload()
        after = app.queries.router.catalog
        assert after is not before and app.catalog is after and app.status.catalog is after
        assert after.deployments["a"] is deployment  # stats and circuit state kept
        assert deployment.stats.samples == 1
        assert deployment.provider.client is client_before
        assert app.http_clients == [client_before]
        assert await served_by(client) == "b"
        # A changed provider gets a new client; the old one is closed once unused.
        changed = config_for(upstream, ["a"])
        changed["providers"][0]["headers"] = {"x-version": "2"}
        write(path, changed)
        assert await app.reloader.reload()
        fresh = app.queries.router.catalog.deployments["a"]
        assert fresh is not deployment and fresh.provider.client is not client_before
        assert await served_by(client) == "a"
        await eventually(lambda: is_closed(client_before))
        assert app.http_clients == [fresh.provider.client]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("groups: [ {name: g", "not valid YAML"),
        ("unknown-model", "unknown model 'nope'"),
        ("unknown-provider-type", "unknown provider type 'nope'"),
        ("fallback-cycle", "fallback cycle"),
    ],
)
async def test_an_invalid_file_is_rejected_and_the_running_table_stays(
    upstream, tmp_path, caplog, text, expected
):
    path = tmp_path / "llmproxy.yaml"
    write(path, config_for(upstream, ["b"]))
    async with reloadable(path) as (app, client):
        table = app.queries.router.catalog
        bad = config_for(upstream, ["b"])
        if text == "unknown-model":
            bad["groups"][0]["members"] = [{"model": "nope"}]
        elif text == "unknown-provider-type":
            bad["providers"][0]["type"] = "nope"
        elif text == "fallback-cycle":
            bad["groups"] = [
                {"name": "g", "members": [{"model": "b"}], "fallback": ["h"]},
                {"name": "h", "members": [{"model": "c"}], "fallback": ["g"]},
            ]
        write(path, bad)
        if text.startswith("groups:"):
            path.write_text(text)
        with caplog.at_level(logging.ERROR, logger="llmproxy.server.reload"):
            assert not await app.reloader.reload()
        assert app.queries.router.catalog is table
        assert await served_by(client) == "b"
    [record] = [r for r in caplog.records if r.name == "llmproxy.server.reload"]
    assert "config reload rejected; the running routing table stays" in record.getMessage()
    assert expected in record.getMessage()


async def test_the_watcher_rejects_a_bad_edit_then_applies_the_fixed_one(upstream, tmp_path):
    path = tmp_path / "llmproxy.yaml"
    write(path, config_for(upstream, ["a"], watch_s=0.03))
    async with reloadable(path) as (app, client):
        table = app.queries.router.catalog
        path.write_text("models: [")
        await asyncio.sleep(0.2)
        assert app.queries.router.catalog is table
        assert await served_by(client) == "a"
        write(path, config_for(upstream, ["c"], watch_s=0.03))
        await eventually(lambda: served_is(client, "c"))


def mock_config(models: list[str]) -> dict:
    return {
        "server": {**SERVER, "grace_period_s": 0},
        "ledger": {"backend": "none"},
        "logging": {"format": "json"},
        "routing": {"watch_interval_s": 0},  # only SIGHUP reloads
        "providers": [{"name": "mock", "type": "mock"}],
        "models": [{"name": m, "provider": "mock"} for m in models],
    }


async def test_sighup_reloads_a_running_server(tmp_path):
    path = tmp_path / "llmproxy.yaml"
    write(path, mock_config(["one"]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmproxy.client.cli",
        "serve",
        "--config",
        str(path),
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        port = await grpc_port_from_logs(proc, lines)
        # Keep reading: a full pipe would block the server's logging, and the server.
        drain = asyncio.create_task(read_lines(proc, lines))
        async with AsyncLLMProxyClient(f"127.0.0.1:{port}") as client:

            async def has_two_models() -> bool:
                return len((await client.status()).models) == 2

            assert [m.name for m in (await client.status()).models] == ["one"]
            write(path, mock_config(["one", "two"]))
            proc.send_signal(signal.SIGHUP)
            await eventually(has_two_models, timeout=5)
            assert (await client.query("hi", model="two")).done.model == "two"
            # A broken file on SIGHUP changes nothing.
            path.write_text("providers: {")
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.3)
            assert (await client.query("hi", model="two")).done.model == "two"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(10):
                await proc.wait()
                if drain is not None:
                    await drain
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert any("config reload rejected" in line for line in lines)


async def read_lines(proc: asyncio.subprocess.Process, lines: list[str]) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        lines.append(line.decode())


async def grpc_port_from_logs(proc: asyncio.subprocess.Process, lines: list[str]) -> int:
    assert proc.stderr is not None
    async with asyncio.timeout(15):
        while line := (await proc.stderr.readline()).decode():
            lines.append(line)
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("message") == "listening":
                    return int(entry["grpc_port"])
    raise AssertionError(f"server exited before listening: {lines}")


def test_without_a_config_file_there_is_no_reloader():
    app = build_app(load_settings(None, overrides={"server": SERVER}))
    assert app.reloader is None
