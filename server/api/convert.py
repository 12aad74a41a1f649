"""Converts between proto messages and domain types, validating what callers send."""

from __future__ import annotations

import math

from llmproxy.server.domain import (
    CacheMode,
    CacheOptions,
    CacheStatus,
    Completed,
    FinishReason,
    Message,
    Parameters,
    QueryInput,
    Role,
)
from llmproxy.server.errors import FieldViolation, InvalidRequestError
from llmproxy.v1 import llmproxy_pb2 as pb

MAX_STOP_SEQUENCES = 16

_ROLES = {pb.ROLE_SYSTEM: Role.SYSTEM, pb.ROLE_USER: Role.USER, pb.ROLE_ASSISTANT: Role.ASSISTANT}
_CACHE_MODES = {
    pb.CACHE_MODE_UNSPECIFIED: CacheMode.DEFAULT,
    pb.CACHE_MODE_BYPASS: CacheMode.BYPASS,
    pb.CACHE_MODE_REFRESH: CacheMode.REFRESH,
}
FINISH_REASONS = {
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: pb.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: pb.FINISH_REASON_TOOL_CALLS,
    FinishReason.OTHER: pb.FINISH_REASON_OTHER,
}
CACHE_STATUSES = {
    CacheStatus.MISS: pb.CACHE_STATUS_MISS,
    CacheStatus.HIT: pb.CACHE_STATUS_HIT,
    CacheStatus.SEMANTIC_HIT: pb.CACHE_STATUS_SEMANTIC_HIT,
    CacheStatus.BYPASS: pb.CACHE_STATUS_BYPASS,
    CacheStatus.REFRESH: pb.CACHE_STATUS_REFRESH,
}


def to_messages(query: str, messages, violations: list[FieldViolation]) -> tuple[Message, ...]:
    if query and messages:
        violations.append(FieldViolation("messages", "set either query or messages, not both"))
        return ()
    if query:
        return (Message(Role.USER, query),)
    if not messages:
        violations.append(FieldViolation("query", "a query or at least one message is required"))
        return ()
    out = []
    for i, m in enumerate(messages):
        role = _ROLES.get(m.role)
        if role is None:
            violations.append(FieldViolation(f"messages[{i}].role", "role must be set"))
            continue
        out.append(Message(role, m.content))
    if out and all(m.role is Role.SYSTEM for m in out):
        violations.append(FieldViolation("messages", "at least one user message is required"))
    return tuple(out)


def to_parameters(p: pb.Parameters, violations: list[FieldViolation]) -> Parameters:
    def check(name: str, ok: bool, description: str) -> None:
        if not ok:
            violations.append(FieldViolation(f"parameters.{name}", description))

    temperature = p.temperature if p.HasField("temperature") else None
    max_tokens = p.max_tokens if p.HasField("max_tokens") else None
    top_p = p.top_p if p.HasField("top_p") else None
    seed = p.seed if p.HasField("seed") else None
    if temperature is not None:
        check(
            "temperature",
            math.isfinite(temperature) and 0 <= temperature <= 2,
            "must be between 0 and 2",
        )
    if max_tokens is not None:
        check("max_tokens", max_tokens >= 1, "must be at least 1")
    if top_p is not None:
        check("top_p", math.isfinite(top_p) and 0 < top_p <= 1, "must be in (0, 1]")
    check("stop", len(p.stop) <= MAX_STOP_SEQUENCES, f"at most {MAX_STOP_SEQUENCES} sequences")
    check("stop", all(p.stop), "stop sequences must not be empty")
    return Parameters(temperature, max_tokens, top_p, tuple(p.stop), seed)


def to_cache_options(c: pb.CacheOptions) -> CacheOptions:
    return CacheOptions(
        _CACHE_MODES.get(c.mode, CacheMode.DEFAULT), c.allow_nondeterministic, c.semantic
    )


def check(violations: list[FieldViolation]) -> None:
    """One INVALID_ARGUMENT naming every bad field, rather than one error per round trip."""
    if violations:
        raise InvalidRequestError(
            "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in violations),
            violations,
        )


def to_query_input(request: pb.QueryRequest, request_id: str) -> QueryInput:
    violations: list[FieldViolation] = []
    messages = to_messages(request.query, request.messages, violations)
    params = to_parameters(request.parameters, violations)
    check(violations)
    return QueryInput(
        messages=messages,
        model=request.model or "auto",
        task_type=request.task_type,
        params=params,
        request_id=request_id,
        cache=to_cache_options(request.cache),
        route_key=request.route_key,
    )


def to_parallel_input(request: pb.ParallelQueryRequest, request_id: str) -> QueryInput:
    violations: list[FieldViolation] = []
    messages = to_messages(request.query, request.messages, violations)
    params = to_parameters(request.parameters, violations)
    if len(set(request.models)) != len(request.models):
        violations.append(FieldViolation("models", "each model may appear once"))
    check(violations)
    return QueryInput(
        messages=messages,
        task_type=request.task_type,
        params=params,
        request_id=request_id,
        cache=to_cache_options(request.cache),
    )


def to_done(event: Completed, request_id: str) -> pb.StreamDone:
    usage = event.usage
    return pb.StreamDone(
        model=event.model,
        provider=event.provider,
        metadata=pb.ResponseMetadata(
            response_time_ms=event.response_time_ms,
            time_to_first_token_ms=event.time_to_first_token_ms,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            finish_reason=FINISH_REASONS[event.finish_reason],
            request_id=request_id,
            provider_finish_reason=event.raw_finish_reason,
            proxy_overhead_us=event.proxy_overhead_us,
        ),
        usage=pb.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            total_tokens=usage.total_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            estimated=usage.estimated,
        ),
        attempts=[
            pb.Attempt(
                model=a.model,
                provider=a.provider,
                error_reason=a.error_reason,
                duration_ms=a.duration_ms,
            )
            for a in event.attempts
        ],
        cache_status=CACHE_STATUSES[event.cache_status],
        cache_similarity=event.cache_similarity,
        cost_usd=event.cost_usd,
    )
