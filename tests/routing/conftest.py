"""The routing tests' scripted upstream: one fake OpenAI-compatible server per test."""

from __future__ import annotations

import pytest

from tests.routing.scripted import scripted_upstream


@pytest.fixture
async def upstream():
    async with scripted_upstream() as state:
        yield state
