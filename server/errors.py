"""The one error hierarchy: every failure the gateway reports is one of these.

Core and providers raise them; `llmproxy.server.api.status` maps each class to a
gRPC status. Messages never contain secrets (keys, tokens, prompts).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(slots=True, frozen=True)
class QuotaViolation:
    subject: str
    description: str


class LLMProxyError(Exception):
    """Base of every expected error; `reason` is the UPPER_SNAKE ErrorInfo reason."""

    reason = "INTERNAL"
    retryable = False

    def __init__(self, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = metadata or {}


class InvalidRequestError(LLMProxyError):
    reason = "INVALID_REQUEST"

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        *,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.violations = violations or []


class ContextTooLongError(InvalidRequestError):
    reason = "CONTEXT_TOO_LONG"


class ModelNotFoundError(LLMProxyError):
    reason = "MODEL_NOT_FOUND"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"unknown model {model!r}; known models: {', '.join(sorted(known))}")
        self.model = model
        self.known = sorted(known)


class UnimplementedError(LLMProxyError):
    reason = "UNIMPLEMENTED"


class UnauthenticatedError(LLMProxyError):
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(LLMProxyError):
    reason = "PERMISSION_DENIED"


class ResourceExhaustedError(LLMProxyError):
    """Our own limits: rate limits and budgets. `retry_after` feeds google.rpc.RetryInfo."""

    reason = "RATE_LIMITED"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        violations: list[QuotaViolation] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.retry_after = retry_after
        self.violations = violations or []


class BudgetExceededError(ResourceExhaustedError):
    reason = "BUDGET_EXCEEDED"


class DeadlineExceededError(LLMProxyError):
    reason = "DEADLINE_EXCEEDED"


class CancelledError(LLMProxyError):
    reason = "CANCELLED"


class UnavailableError(LLMProxyError):
    """No candidate could serve the request (all circuits open, all attempts failed)."""

    reason = "NO_DEPLOYMENT_AVAILABLE"
    retryable = True


class RateLimiterUnavailableError(UnavailableError):
    """The shared rate-limit store is down and the policy is to fail closed."""

    reason = "RATE_LIMITER_UNAVAILABLE"


# --- Upstream (provider) errors -------------------------------------------------


class UpstreamError(LLMProxyError):
    """A provider call failed; `provider` names the configured provider, never its key."""

    reason = "UPSTREAM_ERROR"
    # Whether the failure says the deployment is unhealthy although retrying would not help
    # (our rejected key, our adapter's bug); retryable failures say so anyway. A caller's
    # bad request or an exhausted quota says nothing about it.
    unhealthy = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, metadata=metadata)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after


class UpstreamUnavailableError(UpstreamError):
    """5xx, refused or reset connection, or a stream cut off before its end."""

    reason = "UPSTREAM_UNAVAILABLE"
    retryable = True


class UpstreamOverloadedError(UpstreamUnavailableError):
    reason = "UPSTREAM_OVERLOADED"


class UpstreamTimeoutError(UpstreamError):
    reason = "UPSTREAM_TIMEOUT"
    retryable = True


class UpstreamRateLimitedError(UpstreamError):
    reason = "UPSTREAM_RATE_LIMITED"
    retryable = True


class UpstreamAuthError(UpstreamError):
    """The provider rejected *our* credentials: an operator problem, not the caller's."""

    reason = "UPSTREAM_AUTH_FAILED"
    unhealthy = True


class UpstreamInvalidRequestError(UpstreamError):
    """The provider rejected the request's content (a 400 caused by the caller)."""

    reason = "UPSTREAM_INVALID_REQUEST"


class UpstreamContextTooLongError(UpstreamInvalidRequestError):
    reason = "CONTEXT_TOO_LONG"


class UpstreamProtocolError(UpstreamError):
    """The provider answered something we cannot parse (malformed JSON or SSE)."""

    reason = "UPSTREAM_PROTOCOL_ERROR"
    retryable = True


class AdapterFailedError(UpstreamProtocolError):
    """Our adapter raised on an answer (a bug, not the upstream's fault): the same
    deployment would fail the same way, so it is not retried there. It still falls back
    to the next candidate and counts against the deployment's circuit."""

    retryable = False
    unhealthy = True
