"""One record per RPC, shared by the interceptors that follow a call from start to end.

The outermost `CallInterceptor` creates the `CallInfo`, gives the request an id and
reads each response as it passes (the stream's `done` events carry the served model,
provider, usage, TTFT, cache status and proxy overhead); inner ones reuse the record,
so a stream is read once however many interceptors watch it. Every wrapper ends in
a `finally`, so a cancelled or failed stream is recorded too.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from llmproxy.server.api.error_status import abort, to_rpc_status
from llmproxy.server.errors import LLMProxyError
from llmproxy.server.interceptors import handlers
from llmproxy.server.interceptors.identity import current_key_id
from llmproxy.v1 import llmproxy_pb2 as pb

LLMPROXY_SERVICE = pb.DESCRIPTOR.services_by_name["LLMProxy"].full_name
OK = "OK"


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
    # Set by the first wrapper to finish; None while the call runs.
    code: str | None = None
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


_CALL: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "llmproxy_call", default=None
)


def current_call() -> CallInfo | None:
    return _CALL.get()


def current_request_id() -> str:
    """The running call's request id (a fresh one outside any recorded call)."""
    call = _CALL.get()
    return call.request_id if call is not None else uuid.uuid4().hex


def status_name(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return "CANCELLED"
    return "UNKNOWN"


def _enter(service: str, rpc: str, request: Any) -> tuple[CallInfo, bool]:
    call = _CALL.get()
    if call is not None:
        return call, False
    requested = ""
    request_id = ""
    if service == LLMPROXY_SERVICE:
        if rpc == "Query":
            requested = request.model or "auto"
        elif rpc == "ParallelQuery":
            requested = ",".join(request.models) or "auto"
        if requested:
            # One id for the servicer, the logs and the error details alike.
            request_id = request.request_id or uuid.uuid4().hex
            request.request_id = request_id
    call = CallInfo(
        service,
        rpc,
        time.perf_counter(),
        request_id or uuid.uuid4().hex,
        current_key_id(),
        requested,
    )
    _CALL.set(call)
    return call, True


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


_OBSERVERS: dict[str, Callable[[CallInfo, Any], None]] = {
    "Query": observe_query,
    "ParallelQuery": observe_parallel,
}


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Base: wraps every handler so a subclass sees each call begin, its response, and its end.

    `begin` may raise an LLMProxyError to refuse the call (it becomes the gRPC status);
    `end` runs exactly once per call, after the code and outcomes are known.
    """

    def __init__(self) -> None:
        # method -> (inner handler, wrapped handler): registered handlers never change,
        # so each is wrapped once, not once per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        service, rpc = handlers.split_method(method)
        wrapped = handlers.wrap(
            handler,
            lambda inner: self._unary(service, rpc, inner),
            lambda inner: self._stream(service, rpc, inner),
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        """Before the handler runs; `request` is None for client-streaming RPCs."""

    def response(self, call: CallInfo, message: Any) -> None:
        """A unary RPC's response, before it is sent."""

    def end(self, call: CallInfo) -> None:
        """After the call, however it ended."""

    def _unary(self, service: str, rpc: str, inner: Callable[..., Any]):
        """Also serves coroutine-style streaming handlers (they write via context.write)."""

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
            message = request if isinstance(request, Message) else None
            call, _ = _enter(service, rpc, message)
            error: BaseException | None = None
            try:
                await self.begin(call, message, context)
                response = await inner(request, context)
                self.response(call, response)
                return response
            except LLMProxyError as refused:
                error = refused
                await abort(context, to_rpc_status(refused, call.request_id))
            except BaseException as failed:
                error = failed
                raise
            finally:
                call.finish(context, error)
                self.end(call)

        return behavior

    def _stream(self, service: str, rpc: str, inner: handlers.StreamBehavior):
        if not inspect.isasyncgenfunction(inner):
            return self._unary(service, rpc, inner)
        observe = _OBSERVERS.get(rpc) if service == LLMPROXY_SERVICE else None

        async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            message = request if isinstance(request, Message) else None
            call, owner = _enter(service, rpc, message)
            error: BaseException | None = None
            responses = None
            try:
                await self.begin(call, message, context)
                responses = inner(request, context)
                if owner and observe is not None:
                    async for item in responses:
                        observe(call, item)
                        yield item
                else:
                    async for item in responses:
                        yield item
            except LLMProxyError as refused:
                error = refused
                await abort(context, to_rpc_status(refused, call.request_id))
            except BaseException as failed:
                error = failed
                raise
            finally:
                if responses is not None:
                    # Close the inner stream now, so its own `end` runs before ours.
                    await responses.aclose()
                call.finish(context, error)
                self.end(call)

        return behavior
