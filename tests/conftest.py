"""Shared fixtures: fake upstreams on loopback and a gateway wired to them."""

from __future__ import annotations

import pytest

from tests.fakes.openai_fake import API_KEY, openai_app
from tests.support.upstream import serve_upstream


@pytest.fixture
async def openai_upstream():
    async with serve_upstream(openai_app()) as fake:
        yield fake


def openai_config(base_url: str, models: list[str], **extra) -> dict:
    """A config with one OpenAI-compatible provider and one model per scenario name."""
    return {
        "providers": [
            {
                "name": "fake-openai",
                "type": "openai_compatible",
                "base_url": base_url + "/v1",
                "api_keys": [API_KEY],
            }
        ],
        "models": [
            {
                "name": m,
                "provider": "fake-openai",
                "upstream_model": m,
                "task_types": ["generation"],
            }
            for m in models
        ],
        **extra,
    }
