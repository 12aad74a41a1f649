"""One record per RPC: who called, what was asked, what each model did, how it ended.

Created when a call starts (`enter`), filled from the responses as they pass (the
stream's `done` events carry the served model, provider, usage, TTFT, cache
status and proxy overhead), and closed with the status code (`CallInfo.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from llmproxy.server.errors import LLMProxyError
from llmproxy.server.interceptors.identity import current_key_id
from llmproxy.v1 import llmproxy_pb2 as pb

LLMPROXY_SERVICE = pb.DESCRIPTOR.services_by_name["LLMProxy"].full_name
OK = "OK"
MAX_NAME = 200


@dataclass(slots=True)
class Outcome:
    """What one model did for the call (ParallelQuery has one per model)."""

    model: str
    provider: str
    code: str
    duration_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    cache_status: int = pb.CACHE_STATUS_UNSPECIFIED
    overhead_us: int | None = None
    # The name the caller asked for (a model, a group or "auto").
    requested: str = ""


@dataclass(slots=True)
class CallInfo:
    service: str
    rpc: str
    started: float
    request_id: str
    key_id: str
    requested_model: str = ""
    trace_id: str = ""
    # The gRPC status code's name, set when the call ends.
    code: str | None = None
    # A failed call's ErrorInfo reason (RATE_LIMITED, INVALID_REQUEST, ...), or its code.
    reason: str = ""
    duration_s: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    # The model and provider announced by a Query's start event.
    model: str = ""
    provider: str = ""
    # Only filled when content logging is on.
    prompt: str | None = None
    answer: list[str] | None = None
    # What the rate limiter charged up front, settled against the real usage at the end.
    reservation: Any = None
    # How many interceptors' `begin` ran (their `end` runs).
    begun: int = 0
    # The core wrote this call's ledger record(s) (see `mark_recorded`).
    recorded: bool = False

    @property
    def input_tokens(self) -> int:
        return sum(o.input_tokens for o in self.outcomes)

    @property
    def output_tokens(self) -> int:
        return sum(o.output_tokens for o in self.outcomes)

    def finish(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        if self.code is not None:
            return
        self.duration_s = time.perf_counter() - self.started
        self.code = status_name(context, error)
        if self.code != OK:
            self.reason = reason_of(context, error) or self.code
        if self.rpc == "ParallelQuery" and self.outcomes:
            return  # each model reported its own outcome
        if self.outcomes:  # a Query that sent its done event
            outcome = self.outcomes[0]
            outcome.code, outcome.duration_s = self.code, self.duration_s
            return
        self.outcomes.append(
            Outcome(
                self.model or self.requested_model,
                self.provider,
                self.code,
                self.duration_s,
                requested=self.requested_model,
            )
        )


_random = random.Random()
# A forked worker must not repeat its parent's ids.
os.register_at_fork(after_in_child=_random.seed)

_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "llmproxy_call", default=None
)


def current_call() -> CallInfo | None:
    return _CALL.get()


def current_request_id() -> str:
    """The running call's request id (a fresh one outside any recorded call)."""
    call = _CALL.get()
    return call.request_id if call is not None else new_request_id()


def status_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


def reason_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The ErrorInfo reason the call was refused with: from the error, else from the
    status details an abort left in the trailing metadata (servicer, auth refusals)."""
    if isinstance(error, LLMProxyError):
        return error.reason
    for key, value in context.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            info = error_details_pb2.ErrorInfo()
            with contextlib.suppress(DecodeError):  # not ours: the code will do
                for detail in status_pb2.Status.FromString(value).details:
                    if detail.Unpack(info):
                        return info.reason
    return ""


def mark_recorded() -> None:
    """The core wrote the running call's ledger record: no refusal record is due for it.

    Called from ParallelQuery's per-model tasks too; they share the call's CallInfo.
    """
    call = _CALL.get()
    if call is not None:
        call.recorded = True


def enter(service: str, rpc: str, request: Any) -> CallInfo:
    requested = ""
    request_id = ""
    if service == LLMPROXY_SERVICE:
        if rpc == "Query":
            requested = request.model or "auto"
        elif rpc == "ParallelQuery":
            requested = ",".join(request.models) or "auto"
        if requested:
            requested = requested[:MAX_NAME]  # caller text: bounded before it is logged
            # One id for the servicer, the logs and the error details alike.
            request_id = request.request_id or new_request_id()
            request.request_id = request_id
    call = CallInfo(
        service,
        rpc,
        time.perf_counter(),
        request_id or new_request_id(),
        current_key_id(),
        requested,
    )
    _CALL.set(call)
    return call


def new_request_id() -> str:
    """32 hex digits, like uuid4().hex: unique, not secret, and no syscall per call."""
    return f"{_random.getrandbits(128):032x}"


def observe_query(call: CallInfo, message: pb.QueryResponse) -> None:
    kind = message.WhichOneof("event")
    if kind == "delta":
        if call.answer is not None:
            call.answer.append(message.delta.text)
    elif kind == "done":
        call.outcomes.append(from_done(message.done, call.requested_model))
    elif kind == "start":
        call.model, call.provider = message.start.model, message.start.provider


def observe_parallel(call: CallInfo, message: pb.ParallelQueryResponse) -> None:
    kind = message.WhichOneof("event")
    if kind == "done":
        call.outcomes.append(from_done(message.done, message.model))
    elif kind == "error":
        elapsed = time.perf_counter() - call.started
        call.outcomes.append(
            Outcome(message.model, "", message.error.code, elapsed, requested=message.model)
        )


def from_done(done: pb.StreamDone, requested: str) -> Outcome:
    md = done.metadata
    return Outcome(
        done.model,
        done.provider,
        OK,
        md.response_time_ms / 1000,
        md.input_tokens,
        md.output_tokens,
        md.time_to_first_token_ms / 1000,
        done.cache_status,
        md.proxy_overhead_us,
        requested,
    )


OBSERVERS: dict[str, Callable[[CallInfo, Any], None]] = {
    "Query": observe_query,
    "ParallelQuery": observe_parallel,
}
