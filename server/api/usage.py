"""Converts GetUsage requests to ledger filters and ledger aggregates back to proto."""

from __future__ import annotations

from typing import Protocol

from llmproxy.server.core.accounting.records import UsageAggregate, UsageFilter
from llmproxy.server.errors import FieldViolation, InvalidRequestError, PermissionDeniedError
from llmproxy.server.interceptors.identity import Principal
from llmproxy.v1 import llmproxy_pb2 as pb

# An unset end_time means "up to now", with room for clocks a little ahead of ours.
_FUTURE_SLACK_S = 86_400


class UsageSource(Protocol):
    async def usage(self, where: UsageFilter) -> list[UsageAggregate]: ...


def restrict_to_caller(request: pb.GetUsageRequest, caller: Principal) -> pb.GetUsageRequest:
    """A caller without `usage: all` sees only its own key's usage; asking for another
    key's is refused rather than silently answered with the caller's own."""
    if caller.sees_all_usage:
        return request
    if request.key_id and request.key_id != caller.key_id:
        raise PermissionDeniedError(
            "this key may only read its own usage (scope usage: all reads every key's)",
            metadata={"cause": "usage_scope"},
        )
    restricted = pb.GetUsageRequest()
    restricted.CopyFrom(request)
    restricted.key_id = caller.key_id
    return restricted


def to_filter(request: pb.GetUsageRequest, now: float) -> UsageFilter:
    start = request.start_time.ToNanoseconds() / 1e9 if request.HasField("start_time") else 0.0
    end = (
        request.end_time.ToNanoseconds() / 1e9
        if request.HasField("end_time")
        else now + _FUTURE_SLACK_S
    )
    if end <= start:
        raise InvalidRequestError(
            "end_time must be after start_time",
            [FieldViolation("end_time", "must be after start_time")],
        )
    return UsageFilter(start, end, request.key_id, request.model)


def to_response(rows: list[UsageAggregate]) -> pb.GetUsageResponse:
    response = pb.GetUsageResponse(
        rows=[
            pb.UsageRow(
                day=r.day,
                key_id=r.key_id,
                model=r.model,
                requests=r.requests,
                errors=r.errors,
                cache_hits=r.cache_hits,
                input_tokens=r.input_tokens,
                output_tokens=r.output_tokens,
                cost_usd=r.cost_usd,
            )
            for r in rows
        ]
    )
    response.total_requests = sum(r.requests for r in rows)
    response.total_input_tokens = sum(r.input_tokens for r in rows)
    response.total_output_tokens = sum(r.output_tokens for r in rows)
    response.total_cost_usd = sum(r.cost_usd for r in rows)
    return response
