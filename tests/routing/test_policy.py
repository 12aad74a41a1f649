"""Retry and fallback decisions: backoff bounds, retry-after, which errors move on."""

from __future__ import annotations

import random

from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.config.routing import ResilienceConfig, RetryConfig
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.core.routing.policy import (
    backoff_s,
    counts_against,
    falls_back,
    remaining_after,
    retry_delay,
)
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.mock import MockProvider

RETRIES = RetryConfig(max_attempts=4, backoff_initial_ms=100, backoff_max_ms=300)


def test_full_jitter_backoff_stays_under_a_doubling_capped_ceiling():
    rng = random.Random(3)
    for tries, ceiling in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)]:
        samples = [backoff_s(tries, RETRIES, rng) for _ in range(2000)]
        assert min(samples) >= 0 and max(samples) <= ceiling
        # Full jitter: spread over the whole range, not clustered at the ceiling.
        assert min(samples) < ceiling * 0.05 and max(samples) > ceiling * 0.95


def test_only_retryable_errors_are_retried_and_only_up_to_max_attempts():
    rng = random.Random(1)
    for error in (
        UpstreamUnavailableError("x"),
        UpstreamOverloadedError("x"),
        UpstreamTimeoutError("x"),
        UpstreamRateLimitedError("x"),
    ):
        assert retry_delay(error, 1, RETRIES, rng) is not None
        assert retry_delay(error, 4, RETRIES, rng) is None
    for error in (
        UpstreamInvalidRequestError("x"),
        UpstreamContextTooLongError("x"),
        UpstreamAuthError("x"),
    ):
        assert retry_delay(error, 1, RETRIES, rng) is None


def test_retry_after_is_a_floor_and_a_long_one_is_not_waited_out():
    rng = random.Random(1)
    short = UpstreamRateLimitedError("x", retry_after=0.8)
    assert retry_delay(short, 1, RETRIES, rng) == 0.8
    long = UpstreamRateLimitedError("x", retry_after=1.5)  # max_retry_after_ms is 1000
    assert retry_delay(long, 1, RETRIES, rng) is None


def test_fallback_reasons_are_configurable_and_invalid_requests_stop_by_default():
    default = ResilienceConfig()
    assert falls_back(UpstreamUnavailableError("x"), default)
    assert falls_back(UpstreamContextTooLongError("x"), default)
    assert falls_back(UpstreamAuthError("x"), default)
    assert not falls_back(UpstreamInvalidRequestError("x"), default)
    narrow = ResilienceConfig(fallback_on=["UPSTREAM_TIMEOUT"])
    assert falls_back(UpstreamTimeoutError("x"), narrow)
    assert not falls_back(UpstreamUnavailableError("x"), narrow)


def test_only_health_failures_count_against_the_breaker():
    assert counts_against(UpstreamUnavailableError("x"))
    assert counts_against(UpstreamAuthError("x"))
    assert not counts_against(UpstreamInvalidRequestError("x"))
    assert not counts_against(UpstreamContextTooLongError("x"))


def deployment(name: str, window: int | None) -> Deployment:
    provider = MockProvider(ProviderSettings(name="mock", type="mock"), None, KeyPool([]))
    return Deployment(ModelConfig(name=name, provider="mock", context_window=window), provider)


def test_context_too_long_keeps_only_larger_or_unknown_windows():
    small, same, big, unknown = (
        deployment("small", 8000),
        deployment("same", 16000),
        deployment("big", 128000),
        deployment("unknown", None),
    )
    failed = deployment("failed", 16000)
    pending = [small, same, big, unknown]
    assert remaining_after(UpstreamContextTooLongError("x"), failed, pending) == [big, unknown]
    assert remaining_after(UpstreamUnavailableError("x"), failed, pending) == pending
