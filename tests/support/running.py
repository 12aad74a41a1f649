"""Runs a real gateway on loopback ports for a test, and a client connected to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.server.app import App, build_app
from llmproxy.server.config import Settings, load_settings


def settings_for(config: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Settings from a config dict (None: the embedded default) on free loopback ports."""
    base = dict(config) if config is not None else None
    # No background health checks unless a test asks: they would hit the fakes unprompted.
    server = {
        "host": "127.0.0.1",
        "grpc_port": 0,
        "http_port": 0,
        "grace_period_s": 2,
        "health_check_interval_s": 0,
    }
    server_overrides = overrides.pop("server", {})
    if base is None:
        return load_settings(overrides={"server": {**server, **server_overrides}, **overrides})
    base["server"] = {**server, **base.get("server", {}), **server_overrides}
    base.setdefault("ledger", {"backend": "none"})
    return Settings(**{**base, **overrides})


@contextlib.asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[App]:
    app = build_app(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=1)


@contextlib.asynccontextmanager
async def running_client(
    settings: Settings, **client_kwargs: Any
) -> AsyncIterator[tuple[App, AsyncLLMProxyClient]]:
    async with running_app(settings) as app:
        client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}", **client_kwargs)
        try:
            yield app, client
        finally:
            await client.close()
