"""Status: every configured model with a live health check per provider (list models), run in
parallel, cached briefly, and never on a Query's path, against fakes of each provider type."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from tests.fakes.azure_fake import AZURE_KEY, azure_app
from tests.fakes.mistral_fake import MISTRAL_KEY, mistral_app
from tests.fakes.ollama_fake import ollama_app
from tests.fakes.openai_fake import API_KEY, REPLY, FakeConfig, openai_app
from tests.support.running import running_client, settings_for
from tests.support.upstream import serve_upstream

TIMEOUT_S = 0.5


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def fleet():
    """One fake per provider type, plus two whose models listing outlasts the check timeout."""
    async with (
        serve_upstream(openai_app()) as oai,
        serve_upstream(openai_app(FakeConfig(models_delay_s=3))) as slow1,
        serve_upstream(openai_app(FakeConfig(models_delay_s=3))) as slow2,
        serve_upstream(azure_app()) as azure,
        serve_upstream(mistral_app()) as mistral,
        serve_upstream(ollama_app()) as local,
    ):
        providers = [
            ("openai", "openai", oai.base_url + "/v1", [API_KEY], "ok"),
            ("badkey", "openai", oai.base_url + "/v1", ["sk-rejected-key-000"], "ok"),
            ("down", "openai_compatible", f"http://127.0.0.1:{closed_port()}/v1", [], "ok"),
            ("slow1", "openai_compatible", slow1.base_url + "/v1", [API_KEY], "ok"),
            ("slow2", "openai_compatible", slow2.base_url + "/v1", [API_KEY], "ok"),
            ("azure", "azure_openai", azure.base_url, [AZURE_KEY], "gpt-4o-mini"),
            ("mistral", "mistral", mistral.base_url, [MISTRAL_KEY], "mistral-small-latest"),
            ("local", "ollama", local.base_url, [], "llama3.2"),
        ]
        config = {
            "server": {"health_check_timeout_s": TIMEOUT_S, "health_check_ttl_s": 30},
            "providers": [
                {"name": n, "type": t, "base_url": u, "api_keys": k} for n, t, u, k, _ in providers
            ],
            "models": [
                {"name": f"{n}-model", "provider": n, "upstream_model": m}
                for n, _, _, _, m in providers
            ],
        }
        async with running_client(settings_for(config)) as (_, client):
            yield client, {"openai": oai, "slow1": slow1, "slow2": slow2}


def model_requests(fake) -> int:
    return sum(r.path == "/v1/models" for r in fake.requests)


async def test_status_shows_every_model_with_live_health():
    async with fleet() as (client, _):
        started = time.perf_counter()
        status = await client.status()
        elapsed = time.perf_counter() - started
    by_name = {m.name: m for m in status.models}
    assert set(by_name) == {
        f"{n}-model"
        for n in ("openai", "badkey", "down", "slow1", "slow2", "azure", "mistral", "local")
    }
    for name in ("openai", "azure", "mistral", "local"):
        m = by_name[f"{name}-model"]
        assert m.available, (name, m.last_error)
        assert m.provider == name and m.latency_ms > 0 and m.checked_at.seconds > 0
    assert not by_name["badkey-model"].available
    assert by_name["badkey-model"].last_error.startswith("UPSTREAM_AUTH_FAILED: badkey: ")
    assert not by_name["down-model"].available
    assert by_name["down-model"].last_error.startswith("UPSTREAM_UNAVAILABLE: down: ")
    for slow in ("slow1-model", "slow2-model"):
        assert not by_name[slow].available
        assert by_name[slow].last_error == "health check timed out"
    # Checks run in parallel: two checks that each time out cost one timeout, not two.
    assert elapsed < 2 * TIMEOUT_S


async def test_checks_are_cached_and_refresh_reruns_them():
    async with fleet() as (client, fakes):
        first = await client.status()
        second = await client.status()
        assert model_requests(fakes["openai"]) == 2  # openai and badkey, once each
        assert [m.checked_at for m in first.models] == [m.checked_at for m in second.models]
        await client.status(refresh=True)
        assert model_requests(fakes["openai"]) == 4


async def test_a_slow_health_check_never_delays_a_query():
    async with fleet() as (client, fakes):
        status = asyncio.create_task(client.status(refresh=True))
        await asyncio.sleep(0.05)  # the slow checks are now in flight
        assert model_requests(fakes["slow1"]) == 1
        started = time.perf_counter()
        result = await client.query("Say hello", model="slow1-model")
        assert time.perf_counter() - started < TIMEOUT_S / 2
        assert result.text == "".join(REPLY)
        assert not status.done()
        await status


async def test_queries_run_no_health_checks():
    async with fleet() as (client, fakes):
        for _ in range(3):
            await client.query("Say hello", model="openai-model")
        assert model_requests(fakes["openai"]) == 0


@pytest.mark.parametrize("refresh", [False, True])
async def test_concurrent_status_calls_share_one_check(refresh):
    async with fleet() as (client, fakes):
        await asyncio.gather(*(client.status(refresh=refresh) for _ in range(5)))
        assert model_requests(fakes["slow1"]) == 1
