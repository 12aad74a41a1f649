"""Resilience decisions after a failed attempt: retry here (and after how long), or move on.

Pure functions of the error, the settings and the clock, so the executor's loop
reads as the policy and each rule is tested on its own.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmproxy.server.config.routing import ResilienceConfig, RetryConfig
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.errors import UpstreamContextTooLongError, UpstreamError


def backoff_s(tries: int, retries: RetryConfig, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max, initial * 2^(tries-1))].

    Full jitter spreads the retries of many callers that failed together, so
    they do not hit a recovering upstream in lockstep.
    """
    ceiling = min(retries.backoff_max_ms, retries.backoff_initial_ms * 2 ** (tries - 1))
    return rng.uniform(0.0, ceiling) / 1000.0


def retry_delay(
    error: UpstreamError, tries: int, retries: RetryConfig, rng: random.Random
) -> float | None:
    """Seconds to wait before trying the same deployment again, or None to stop here.

    Only retryable errors are retried. A retry-after is a floor for the wait;
    one longer than `max_retry_after_ms` is not waited out: another candidate,
    or the caller (who gets it as RetryInfo), is better placed to wait.
    """
    if not error.retryable or tries >= retries.max_attempts:
        return None
    delay = backoff_s(tries, retries, rng)
    if error.retry_after is not None:
        if error.retry_after * 1000.0 > retries.max_retry_after_ms:
            return None
        delay = max(delay, error.retry_after)
    return delay


def falls_back(error: UpstreamError, resilience: ResilienceConfig) -> bool:
    """Whether the next candidate may be tried after this error (before the first token)."""
    return error.reason in resilience.fallback_on


def counts_against(error: UpstreamError) -> bool:
    """Whether the failure says the deployment is unhealthy (feeds its circuit breaker)."""
    return error.retryable or error.unhealthy


def remaining_after(
    error: UpstreamError, failed: Deployment, pending: Sequence[Deployment]
) -> list[Deployment]:
    """The candidates still worth trying: after context-too-long, only larger windows."""
    window = failed.config.context_window
    if not isinstance(error, UpstreamContextTooLongError) or window is None:
        return list(pending)
    return [
        d for d in pending if d.config.context_window is None or d.config.context_window > window
    ]
