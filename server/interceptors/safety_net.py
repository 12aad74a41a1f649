"""The outermost interceptor: an exception while the chain picks a call's handler becomes
INTERNAL with a request id (and the stack in the log), not grpc's UNKNOWN carrying its text.

Exceptions inside a handler are another matter: `base` and the servicer turn those
into statuses. This one covers the steps before any handler exists (an interceptor's
`intercept_service`), where nothing else would. On the normal path it is one await
inside a try; it adds no work per message.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import descriptor_pool

from llmproxy.server.api.error_status import internal_status
from llmproxy.server.interceptors import handlers
from llmproxy.server.interceptors.call import MAX_NAME, new_request_id

log = logging.getLogger(__name__)

# (request streaming, response streaming) -> factory of a handler of that shape.
_SHAPES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class SafetyNetInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        try:
            return await continuation(handler_call_details)
        except Exception as failed:
            return refusal(handler_call_details.method, failed)


def refusal(method: str, failed: Exception) -> grpc.RpcMethodHandler:
    """Log `failed` with its stack; a handler of the method's shape that answers INTERNAL."""
    request_id = new_request_id()
    log.error(
        "interceptors failed on %s",
        method[:MAX_NAME],  # caller text: bounded before it is logged
        exc_info=failed,
        extra={"request_id": request_id},
    )
    status = internal_status(request_id)
    return handlers.aborting(shape_of(method), lambda: status)


def shape_of(method: str) -> grpc.RpcMethodHandler:
    """An empty handler of the method's call shape, from the descriptors its service
    registered. The chain failed before the real handler was found, so there is none to copy.
    An unknown method gets stream-stream, which reads and sends nothing before aborting."""
    service, rpc = handlers.split_method(method)
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{rpc}")
        shape = (found.client_streaming, found.server_streaming)
    except (KeyError, TypeError):
        shape = (True, True)
    return _SHAPES[shape](None)
