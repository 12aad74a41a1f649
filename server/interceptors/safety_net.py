"""The outermost interceptor: an exception while the chain picks a call's handler becomes
INTERNAL with a request id (and the stack in the log), not grpc's UNKNOWN carrying its text.

Exceptions inside a handler are another matter: `base` and the servicer turn those
into statuses. This one covers the steps before any handler exists (an interceptor's
`intercept_service`), where nothing else would. A failure inside the call observers
(after the access log) is caught by the outermost of them instead, with the same
`refusal`, so the refused call still gets its log line and metrics (`base.join`). On
the normal path it is one await inside a try; it adds no work per message.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import status_pb2

from llmproxy.server.api.error_status import internal_status
from llmproxy.server.interceptors import handlers
from llmproxy.server.interceptors.call import MAX_NAME, current_request_id

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
    """A handler of the method's shape that logs `failed` with its stack and answers
    INTERNAL, both under the call's request id (the one its access-log line has)."""

    def status() -> status_pb2.Status:
        request_id = current_request_id()
        log.error(
            "interceptors failed on %s",
            method[:MAX_NAME],  # caller text: bounded before it is logged
            exc_info=failed,
            extra={"request_id": request_id},
        )
        return internal_status(request_id)

    return handlers.aborting(shape_of(method), status)


def shape_of(method: str) -> grpc.RpcMethodHandler:
    """An empty handler of the method's call shape and request type, from the descriptors
    its service registered. The chain failed before the real handler was found, so there is
    none to copy; the request is still read, so the call's record names the model asked for.
    An unknown method gets stream-stream, which reads and sends nothing before aborting."""
    service, rpc = handlers.split_method(method)
    try:
        found = descriptor_pool.Default().FindMethodByName(f"{service}.{rpc}")
    except (KeyError, TypeError):
        return _SHAPES[(True, True)](None)
    request = message_factory.GetMessageClass(found.input_type)
    shape = (found.client_streaming, found.server_streaming)
    return _SHAPES[shape](None, request_deserializer=request.FromString)
