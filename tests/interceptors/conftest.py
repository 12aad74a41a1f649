"""Fixtures for the interceptor tests: a mock-backed config, captured JSON logs, keys, Redis."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from llmproxy.server.config import Settings
from llmproxy.server.logs import JsonFormatter
from llmproxy.server.security.api_keys import generate_key, hash_key
from tests.support.running import settings_for

REDIS_URL = "redis://127.0.0.1:6379/0"

MOCK: dict[str, Any] = {
    "providers": [
        {"name": "mock", "type": "mock", "options": {"ttft_ms": 0, "tokens_per_s": 0}},
    ],
    "models": [
        {"name": "fast", "provider": "mock", "upstream_model": "mock-fast"},
        {"name": "smart", "provider": "mock", "upstream_model": "mock-smart"},
    ],
}


def mock_settings(**sections: Any) -> Settings:
    """The mock provider with models `fast` and `smart`, plus the given config sections."""
    return settings_for({**MOCK, **sections})


class LogLines(logging.Handler):
    """Every record, formatted exactly as the server's JSON log formatter writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))
        self.records.append(record)

    def access(self) -> list[dict[str, Any]]:
        import orjson

        return [
            orjson.loads(line)
            for line, record in zip(self.lines, self.records, strict=True)
            if record.name == "llmproxy.access"
        ]

    def assert_no_secret(self, *secrets: str) -> None:
        for secret in secrets:
            leaked = [line for line in self.lines if secret in line]
            assert not leaked, f"a secret reached the logs: {leaked[:1]}"


@pytest.fixture
def logs():
    handler = LogLines()
    root, ours = logging.getLogger(), logging.getLogger("llmproxy")
    old_level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        ours.setLevel(old_level)


@pytest.fixture
def keys() -> dict[str, str]:
    """Fresh raw keys by id; the config only ever sees their hashes."""
    return {name: generate_key() for name in ("team-a", "team-b", "expired", "limited")}


def key_entry(key_id: str, raw: str, **extra: Any) -> dict[str, Any]:
    return {"id": key_id, "hash": hash_key(raw), **extra}


@pytest.fixture
async def redis_prefix():
    """A unique key prefix, and every key under it deleted afterwards."""
    prefix = f"llmproxy:test:{uuid.uuid4().hex}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        async for key in client.scan_iter(match=prefix + "*"):
            await client.delete(key)
    finally:
        await client.aclose()
