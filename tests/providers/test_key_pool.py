"""API-key pools: load spread over keys, refused keys resting (honouring retry-after) while the
others serve, failover within one call, and keys never in errors, logs or metrics."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
from prometheus_client import generate_latest
from pydantic import SecretStr

from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.errors import key_cooldown_s
from llmproxy.server.providers.keys import MAX_COOLDOWN_S, KeyPool
from llmproxy.server.providers.openai import OpenAIProvider
from tests.fakes.openai_fake import REPLY, FakeConfig, openai_app
from tests.providers.chat_harness import (
    chat,
    collect,
    gateway_config,
    http_fixture,
    upstream_fixture,
)
from tests.support.running import running_client, settings_for

GOOD_A, GOOD_B, GOOD_C = "sk-good-aaaa1111", "sk-good-bbbb2222", "sk-good-cccc3333"
BAD, LIMITED, BROKE = "sk-revoked-dddd4444", "sk-limited-eeee5555", "sk-broke-ffff6666"
ALL_SECRETS = (GOOD_A, GOOD_B, GOOD_C, BAD, LIMITED, BROKE)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pool(*keys: str, clock: Clock | None = None) -> KeyPool:
    return KeyPool([SecretStr(k) for k in keys], clock=clock or Clock())


# --- the pool alone ------------------------------------------------------------------


def test_round_robin_spreads_evenly():
    p = pool("a", "b", "c")
    assert [p.acquire()[1] for _ in range(6)] == ["key-0", "key-1", "key-2"] * 2


def test_resting_key_is_skipped_until_its_cooldown_ends():
    clock = Clock()
    p = pool("a", "b", "c", clock=clock)
    p.cool_down("key-1", 10)
    assert [p.acquire()[0] for _ in range(4)] == ["a", "c", "a", "c"]
    assert p.cooling() == ["key-1"]
    clock.now += 10
    assert {p.acquire()[0] for _ in range(3)} == {"a", "b", "c"}
    assert p.cooling() == []


def test_when_every_key_rests_the_first_to_recover_is_used():
    p = pool("a", "b")
    p.cool_down("key-0", 30)
    p.cool_down("key-1", 5)
    assert p.acquire() == ("b", "key-1")
    assert p.acquire_ready() is None


def test_acquire_ready_excludes_keys_already_tried():
    p = pool("a", "b", "c")
    assert p.acquire_ready(exclude={"key-0", "key-1"}) == ("c", "key-2")
    assert p.acquire_ready(exclude={"key-0", "key-1", "key-2"}) is None


def test_cooldowns_are_bounded_and_never_shortened():
    clock = Clock()
    p = pool("a", clock=clock)
    p.cool_down("key-0", 10**9)
    clock.now += MAX_COOLDOWN_S
    assert p.cooling() == []
    p.cool_down("key-0", 60)
    p.cool_down("key-0", 1)  # a shorter rest does not cut a longer one
    clock.now += 30
    assert p.cooling() == ["key-0"]


def test_empty_pool_and_reprs_hide_secrets():
    assert pool().acquire() is None
    p = pool(GOOD_A, BAD)
    assert GOOD_A not in repr(p) and GOOD_A not in str(vars(p))


@pytest.mark.parametrize(
    ("error", "seconds"),
    [
        (UpstreamRateLimitedError("x", status=429, retry_after=7), 7),
        (UpstreamRateLimitedError("x", status=429), 1.0),
        (UpstreamAuthError("x", status=401), 300.0),
        (UpstreamUnavailableError("x", status=500), None),
    ],
)
def test_cooldown_policy(error, seconds):
    assert key_cooldown_s(error) == seconds


def test_exhausted_quota_rests_long():
    error = UpstreamRateLimitedError("x", status=429)
    error.retryable = False
    assert key_cooldown_s(error) == 900.0


# --- against a fake that refuses some keys --------------------------------------------


KEYS = {GOOD_A: "ok", GOOD_B: "ok", GOOD_C: "ok", BAD: "401", LIMITED: "429", BROKE: "quota"}
http = http_fixture(read_timeout_s=1.0)
upstream = upstream_fixture(lambda: openai_app(FakeConfig(keys=KEYS)))


def provider(upstream, http, keys: KeyPool) -> OpenAIProvider:
    settings = ProviderSettings("oai", "openai", upstream.base_url + "/v1")
    return OpenAIProvider(settings, http, keys)


def keys_seen(upstream) -> Counter[str]:
    return Counter(r.headers["authorization"].removeprefix("Bearer ") for r in upstream.requests)


async def test_revoked_key_rests_and_the_others_share_the_load(upstream, http):
    clock = Clock()
    keys = pool(GOOD_A, BAD, GOOD_B, clock=clock)
    p = provider(upstream, http, keys)
    for _ in range(21):
        text, _, _ = await collect(p, chat("ok"))
        assert text == "".join(REPLY)  # every call succeeds: failover within the call
    seen = keys_seen(upstream)
    assert seen[BAD] == 1
    assert abs(seen[GOOD_A] - seen[GOOD_B]) <= 1 and seen[GOOD_A] + seen[GOOD_B] == 21
    assert keys.cooling() == ["key-1"]
    clock.now += 300  # after its rest the key is tried again
    await collect(p, chat("ok"))
    await collect(p, chat("ok"))
    assert keys_seen(upstream)[BAD] == 2


@pytest.mark.parametrize(("bad_key", "rest"), [(LIMITED, 7.0), (BROKE, 900.0)])
async def test_rate_limited_key_rests_as_long_as_told(upstream, http, bad_key, rest):
    clock = Clock()
    keys = pool(bad_key, GOOD_A, clock=clock)
    p = provider(upstream, http, keys)
    text, _, _ = await collect(p, chat("ok"))
    assert text == "".join(REPLY)
    assert keys.cooling() == ["key-0"]
    clock.now += rest - 0.01
    assert keys.cooling() == ["key-0"]
    clock.now += 0.02
    assert keys.cooling() == []


async def test_every_key_refused_fails_after_one_try_each(upstream, http):
    p = provider(upstream, http, pool(BAD, LIMITED, BROKE))
    with pytest.raises((UpstreamAuthError, UpstreamRateLimitedError)) as caught:
        await collect(p, chat("ok"))
    assert sorted(keys_seen(upstream).values()) == [1, 1, 1]
    assert not any(s in str(caught.value) for s in ALL_SECRETS)


async def test_errors_that_are_not_the_keys_fault_do_not_rotate(upstream, http):
    keys = pool(GOOD_A, GOOD_B)
    with pytest.raises(UpstreamUnavailableError):
        await collect(provider(upstream, http, keys), chat("500"))
    assert len(upstream.requests) == 1 and keys.cooling() == []


async def test_listing_models_fails_over_too(upstream, http):
    keys = pool(BAD, GOOD_C)
    assert await provider(upstream, http, keys).list_models()
    assert keys_seen(upstream) == Counter({BAD: 1, GOOD_C: 1})


# --- through the gateway: keys never in logs, metrics or errors ------------------------


async def test_gateway_with_a_pool_never_shows_a_key(upstream, caplog):
    caplog.set_level(logging.DEBUG)
    config = gateway_config(
        {
            "name": "pool",
            "type": "openai",
            "base_url": upstream.base_url + "/v1",
            "api_keys": [GOOD_A, BAD, GOOD_B],
        },
        ["ok", "500"],
    )
    config["providers"].append(
        {
            "name": "refused",
            "type": "openai",
            "base_url": upstream.base_url + "/v1",
            "api_keys": [BAD, BROKE],
        }
    )
    config["models"].append({"name": "refused-ok", "provider": "refused", "upstream_model": "ok"})
    async with running_client(settings_for(config)) as (app, client):
        for _ in range(6):
            assert (await client.query("Say hello", model="ok")).text == "".join(REPLY)
        errors = []
        for model in ("refused-ok", "500"):
            try:
                await client.query("hi", model=model)
            except Exception as exc:  # grpc.aio.AioRpcError
                errors.append(f"{exc!r} {exc.details()} {exc.trailing_metadata()}")
        assert len(errors) == 2
        status = await client.status(refresh=True)
        exposition = generate_latest(app.registry).decode()
    seen = keys_seen(upstream)
    assert seen[GOOD_A] + seen[GOOD_B] >= 6
    for secret in ALL_SECRETS:
        assert secret not in caplog.text
        assert secret not in exposition
        assert secret not in str(status)
        assert not any(secret in e for e in errors)
    assert "key-1" in caplog.text  # the label is what operators see
