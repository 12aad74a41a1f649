"""One record per RPC, and the base of the interceptors that follow a call from start to end.

The outermost `CallInterceptor` wraps the handler once; the others join the call
(see `CallInterceptor.join`), so a stream is wrapped once and read once however
many interceptors watch it. The wrapper creates the `CallInfo`, gives the request
an id, reads each response as it passes (the stream's `done` events carry the
served model, provider, usage, TTFT, cache status and proxy overhead) and ends in
a `finally`, so a cancelled or failed stream is recorded too.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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
    # How many interceptors' `begin` ran (their `end` runs).
    begun: int = 0

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


_random = random.Random()

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


def _enter(service: str, rpc: str, request: Any) -> CallInfo:
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


_OBSERVERS: dict[str, Callable[[CallInfo, Any], None]] = {
    "Query": observe_query,
    "ParallelQuery": observe_parallel,
}


# The CallInterceptors that joined the running call, outermost first (see `join`).
_HOOKS: contextvars.ContextVar[list[CallInterceptor] | None] = contextvars.ContextVar(
    "llmproxy_call_hooks", default=None
)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Base: a subclass sees each call begin, its unary response, and its end.

    `begin` may raise an LLMProxyError to refuse the call (it becomes the gRPC
    status) and may be a coroutine; `end` runs once per call whose `begin` ran,
    after the code and outcomes are known, innermost first.

    However many CallInterceptors a chain has, a call is wrapped once: the
    outermost one wraps the handler, the inner ones only join the call's hook list
    while the chain is resolved, so a stream pays one generator hop per message
    and is read once. Hooks run in chain order, so everything between two of them
    in the chain (auth deciding from metadata) has already happened.
    """

    def __init__(self) -> None:
        # method -> (inner handler, wrapped handler): registered handlers never change,
        # so each is wrapped once, not once per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        return await self.join(continuation, handler_call_details)

    async def join(self, continuation, handler_call_details):
        """Add this interceptor's hooks to the call; the outermost one also wraps the handler."""
        hooks = _HOOKS.get()
        if hooks is not None:
            hooks.append(self)
            return await continuation(handler_call_details)
        _HOOKS.set([self])
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
            lambda inner: _unary(service, rpc, inner),
            lambda inner: _stream(service, rpc, inner),
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def begin(
        self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext
    ) -> Awaitable[None] | None:
        """Before the handler runs; `request` is None for client-streaming RPCs."""
        return None

    def response(self, call: CallInfo, message: Any) -> None:
        """A unary RPC's response, before it is sent."""

    def end(self, call: CallInfo) -> None:
        """After the call, however it ended."""


def hooks_mark() -> int:
    """How many interceptors have joined the call so far (for `drop_hooks_after`)."""
    hooks = _HOOKS.get()
    return 0 if hooks is None else len(hooks)


def drop_hooks_after(mark: int) -> None:
    """Forget the interceptors that joined after `mark`: the call is refused before them."""
    hooks = _HOOKS.get()
    if hooks is not None:
        del hooks[mark:]


async def _begin_all(hooks: list[CallInterceptor], call: CallInfo, message, context) -> int:
    ran = 0
    try:
        for hook in hooks:
            pending = hook.begin(call, message, context)
            if pending is not None:
                await pending
            ran += 1
    finally:
        call.begun = ran
    return ran


def _end_all(hooks: list[CallInterceptor], call: CallInfo, context, error) -> None:
    call.finish(context, error)
    for hook in reversed(hooks[: call.begun]):
        hook.end(call)


def _unary(service: str, rpc: str, inner: Callable[..., Any]):
    """Also serves coroutine-style streaming handlers (they write via context.write)."""

    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        hooks = _HOOKS.get() or []
        message = request if isinstance(request, Message) else None
        call = _enter(service, rpc, message)
        error: BaseException | None = None
        try:
            await _begin_all(hooks, call, message, context)
            response = await inner(request, context)
            for hook in hooks:
                hook.response(call, response)
            return response
        except LLMProxyError as refused:
            error = refused
            await abort(context, to_rpc_status(refused, call.request_id))
        except BaseException as failed:
            error = failed
            raise
        finally:
            _end_all(hooks, call, context, error)

    return behavior


def _stream(service: str, rpc: str, inner: handlers.StreamBehavior):
    if not inspect.isasyncgenfunction(inner):
        return _unary(service, rpc, inner)
    observe = _OBSERVERS.get(rpc) if service == LLMPROXY_SERVICE else None

    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        hooks = _HOOKS.get() or []
        message = request if isinstance(request, Message) else None
        call = _enter(service, rpc, message)
        error: BaseException | None = None
        responses = None
        try:
            await _begin_all(hooks, call, message, context)
            responses = inner(request, context)
            if observe is not None:
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
                # Finish the handler's own cleanup before the hooks read the outcome.
                await responses.aclose()
            _end_all(hooks, call, context, error)

    return behavior
