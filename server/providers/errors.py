"""Turns an upstream HTTP failure into the typed UpstreamError that the core understands."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

import httpx

from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)

_CONTEXT_HINTS = (
    "context length",
    "context_length",
    "maximum context",
    "too many tokens",
    "context window",
    "prompt is too long",
    "input is too long",
    "exceeds the maximum number of tokens",
)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms`, `retry-after` (seconds or HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def classify_status(
    status: int, message: str, *, provider: str, headers: Mapping[str, str] | None = None
) -> UpstreamError:
    """The one table from HTTP status to error class, shared by every adapter."""
    retry_after = parse_retry_after(headers or {})
    text = f"{provider}: upstream returned HTTP {status}: {message}".strip()
    kwargs = {"provider": provider, "status": status, "retry_after": retry_after}
    lowered = message.lower()
    if status == 429:
        return UpstreamRateLimitedError(text, **kwargs)
    if status in (401, 403):
        return UpstreamAuthError(
            f"{provider}: upstream rejected the gateway's credentials (HTTP {status})", **kwargs
        )
    if status == 413 or (status in (400, 422) and any(h in lowered for h in _CONTEXT_HINTS)):
        return UpstreamContextTooLongError(text, **kwargs)
    if status == 408:
        return UpstreamTimeoutError(text, **kwargs)
    if status == 529:
        return UpstreamOverloadedError(text, **kwargs)
    if 400 <= status < 500:
        return UpstreamInvalidRequestError(text, **kwargs)
    return UpstreamUnavailableError(text, **kwargs)


def key_cooldown_s(error: UpstreamError) -> float | None:
    """How long the key that drew `error` should rest; None when the key is not to blame.

    By class, not status: some providers refuse a bad key with a 400 (Gemini).
    """
    if isinstance(error, UpstreamRateLimitedError):
        # A rate limit marked not retryable is an exhausted quota (billing): rest long.
        return error.retry_after or (1.0 if error.retryable else 900.0)
    if isinstance(error, UpstreamAuthError):
        return 300.0
    return None


def classify_transport_error(exc: Exception, *, provider: str) -> UpstreamError:
    """Connection-level failures: timeouts, refused and reset connections."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(
            f"{provider}: upstream timed out ({type(exc).__name__})", provider=provider
        )
    name = type(exc.__cause__ or exc).__name__
    return UpstreamUnavailableError(
        f"{provider}: upstream connection failed ({name})", provider=provider
    )
