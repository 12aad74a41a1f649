"""Rebuilding gRPC method handlers: same call shape, new behaviour (a wrapper or an abort)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.rpc import status_pb2

from llmproxy.server.api.error_status import abort

# A behaviour for a unary response: async (request_or_iterator, context) -> response.
UnaryBehavior = Callable[[Any, grpc.aio.ServicerContext], Any]
# A behaviour for a streamed response: an async generator (request_or_iterator, context).
StreamBehavior = Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]

_FACTORIES = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


def split_method(method: str) -> tuple[str, str]:
    """'/llmproxy.v1.LLMProxy/Query' -> ('llmproxy.v1.LLMProxy', 'Query')."""
    service, _, rpc = method.lstrip("/").partition("/")
    return service, rpc


def behavior_of(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    attr, _ = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return getattr(handler, attr)


def rebuild(handler: grpc.RpcMethodHandler, behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s shape and serializers that runs `behavior` instead.

    For a streamed response `behavior` must be an async generator function: grpc.aio
    decides how to drive a handler by inspecting the function itself.
    """
    _, factory = _FACTORIES[(handler.request_streaming, handler.response_streaming)]
    return factory(behavior, handler.request_deserializer, handler.response_serializer)


def wrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    stream: Callable[[StreamBehavior], StreamBehavior],
) -> grpc.RpcMethodHandler:
    """Wrap the behaviour with `unary` or `stream`, whichever fits the response shape."""
    inner = behavior_of(handler)
    return rebuild(handler, stream(inner) if handler.response_streaming else unary(inner))


def aborting(
    handler: grpc.RpcMethodHandler, status: Callable[[], status_pb2.Status]
) -> grpc.RpcMethodHandler:
    """A handler of the same shape that answers every call with `status()` and nothing else.

    `status` is called when the RPC runs, so it can include that call's request id.
    """

    async def refuse_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, status())

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await abort(context, status())
        yield  # pragma: no cover - makes this an async generator; abort always raises

    return rebuild(handler, refuse_stream if handler.response_streaming else refuse_unary)
