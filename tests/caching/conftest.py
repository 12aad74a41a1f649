"""Fixtures for the cache tests: a fake upstream, gateway configs and Redis key prefixes."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest
import redis.asyncio as redis

from tests.caching.fake_llm import fake_llm_app
from tests.support.upstream import serve_upstream

# The semantic model loads from site-packages; the hub must never be asked.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REDIS_URL = "redis://127.0.0.1:6379/0"
# A port nothing listens on: connections are refused at once.
CLOSED_REDIS_URL = "redis://127.0.0.1:1/0"
MODELS = ["ok", "ok2", "slow", "gated", "content-filter", "length", "truncated", "500", "gated-500"]


@pytest.fixture
async def upstream():
    async with serve_upstream(fake_llm_app()) as fake:
        yield fake


def gateway_config(
    base_url: str, *, cache: dict[str, Any] | None = None, groups: list | None = None
) -> dict[str, Any]:
    return {
        "providers": [
            {
                "name": "fake",
                "type": "openai_compatible",
                "base_url": base_url + "/v1",
                "api_keys": ["sk-test-cache"],
            }
        ],
        "models": [{"name": m, "provider": "fake", "upstream_model": m} for m in MODELS],
        "groups": groups or [],
        "cache": cache or {},
    }


@pytest.fixture
async def redis_prefix():
    """A key prefix of this test's own; every key under it is deleted afterwards."""
    prefix = f"llmproxy-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            # One key at a time: they span slots, and the test must behave as on a cluster.
            for key in keys:
                await client.delete(key)
    finally:
        await client.aclose()


async def eventually(predicate, timeout_s: float = 3.0) -> None:
    """Poll `predicate` until it holds; fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.005)
