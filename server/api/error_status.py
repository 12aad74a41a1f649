"""The one mapping from llmproxy errors to gRPC statuses with google.rpc details."""

from __future__ import annotations

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmproxy.server import errors as e

DOMAIN = "llmproxy"

# Every error class, mapped explicitly; a test checks none is missing.
CODES: dict[type[e.LLMProxyError], grpc.StatusCode] = {
    e.LLMProxyError: grpc.StatusCode.INTERNAL,
    e.InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    e.ContextTooLongError: grpc.StatusCode.INVALID_ARGUMENT,
    e.ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    e.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    e.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    e.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    e.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.BudgetExceededError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.CancelledError: grpc.StatusCode.CANCELLED,
    e.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    e.RateLimiterUnavailableError: grpc.StatusCode.UNAVAILABLE,
    e.UpstreamError: grpc.StatusCode.UNAVAILABLE,
    e.UpstreamUnavailableError: grpc.StatusCode.UNAVAILABLE,
    e.UpstreamOverloadedError: grpc.StatusCode.UNAVAILABLE,
    e.UpstreamTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.UpstreamRateLimitedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    # Our provider key was refused: the operator's problem, never the caller's.
    e.UpstreamAuthError: grpc.StatusCode.FAILED_PRECONDITION,
    e.UpstreamInvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    e.UpstreamContextTooLongError: grpc.StatusCode.INVALID_ARGUMENT,
    e.UpstreamProtocolError: grpc.StatusCode.UNAVAILABLE,
    e.AdapterFailedError: grpc.StatusCode.UNAVAILABLE,
}


def code_for(error: e.LLMProxyError) -> grpc.StatusCode:
    return CODES[type(error)] if type(error) in CODES else _nearest(type(error))


def _nearest(cls: type) -> grpc.StatusCode:
    for base in cls.__mro__:
        if base in CODES:
            return CODES[base]
    return grpc.StatusCode.INTERNAL


def to_rpc_status(error: e.LLMProxyError, request_id: str) -> status_pb2.Status:
    code = code_for(error)
    metadata = {k: str(v) for k, v in error.metadata.items()}
    provider = getattr(error, "provider", "")
    if provider:
        metadata["provider"] = provider
    details = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata),
        error_details_pb2.RequestInfo(request_id=request_id),
    ]
    if isinstance(error, e.InvalidRequestError) and error.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if isinstance(error, e.ResourceExhaustedError) and error.violations:
        details.append(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=v.subject, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    for detail in details:
        status.details.add().Pack(detail)
    return status


def internal_status(request_id: str) -> status_pb2.Status:
    """For unexpected exceptions: a generic message; the stack goes to the log only."""
    return to_rpc_status(e.LLMProxyError(f"internal error (request_id={request_id})"), request_id)


async def abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    # What abort_with_status does, but through abort(): wrappers of the context
    # (OpenTelemetry's server interceptor) see the code and record it on the span.
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
