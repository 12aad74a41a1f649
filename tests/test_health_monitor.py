"""Availability stays current in metrics without anyone calling Status."""

from __future__ import annotations

import asyncio
import re

import aiohttp

from tests.conftest import openai_config
from tests.support.running import running_app, settings_for


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def availability(text: str, model: str) -> float | None:
    match = re.search(
        rf'^llmproxy_model_availability{{model="{model}",provider="[^"]+"}} (\S+)', text, re.M
    )
    return float(match.group(1)) if match else None


async def test_background_checks_update_the_availability_gauge(openai_upstream):
    config = openai_config(openai_upstream.base_url, ["ok"])
    config["providers"].append(
        {
            "name": "down",
            "type": "openai_compatible",
            "base_url": "http://127.0.0.1:9/v1",
            "api_keys": ["k"],
        }
    )
    config["models"].append({"name": "gone", "provider": "down"})
    settings = settings_for(
        config, server={"health_check_interval_s": 0.1, "health_check_timeout_s": 1}
    )
    async with running_app(settings) as app:
        for _ in range(50):
            text = await scrape(app.http_port)
            if availability(text, "ok") is not None and availability(text, "gone") is not None:
                break
            await asyncio.sleep(0.05)
        assert availability(text, "ok") == 1.0
        assert availability(text, "gone") == 0.0
        checks = len([r for r in openai_upstream.requests if r.path == "/v1/models"])
        await asyncio.sleep(0.35)
        assert len([r for r in openai_upstream.requests if r.path == "/v1/models"]) > checks
    # Stopping the app stops the monitor: no more checks arrive.
    after = len(openai_upstream.requests)
    await asyncio.sleep(0.25)
    assert len(openai_upstream.requests) == after
