"""A grpc-gateway-style REST shim: routes come from the proto's google.api.http annotations.

Each HTTP request becomes a gRPC call to this gateway's own port, so auth, limits,
metrics and logs apply exactly as for gRPC callers. Server-streaming RPCs answer
with newline-delimited JSON (`{"result": ...}` per message, `{"error": ...}` on
failure), as grpc-gateway does; Download answers with the file itself.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass

import grpc
import orjson
from aiohttp import web
from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from llmproxy.v1 import llmproxy_pb2

# Metadata passed from HTTP headers to the gRPC call.
FORWARDED_HEADERS = (
    "authorization",
    "x-api-key",
    "x-llmproxy-route-key",
    "traceparent",
    "tracestate",
)

# The longest Grpc-Timeout honoured (a year); longer ones are cut to it.
MAX_TIMEOUT_S = 365 * 24 * 3600.0

# As grpc-gateway maps them (runtime/errors.go HTTPStatusFromCode).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


@dataclass(frozen=True, slots=True)
class Route:
    http_method: str
    path: str
    body: str
    method: MethodDescriptor


def routes(service_name: str = "LLMProxy") -> list[Route]:
    """Every RPC of the service that carries a google.api.http rule."""
    service = llmproxy_pb2.DESCRIPTOR.services_by_name[service_name]
    out = []
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        kind = rule.WhichOneof("pattern")
        if kind in ("get", "post", "put", "patch", "delete"):
            out.append(Route(kind.upper(), getattr(rule, kind), rule.body, method))
    return out


def _to_json(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


def _status_body(error: grpc.aio.AioRpcError) -> tuple[int, dict, dict[str, str]]:
    status = rpc_status.from_call(error) or status_pb2.Status(
        code=error.code().value[0], message=error.details() or ""
    )
    headers = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            headers["retry-after"] = str(max(1, round(info.retry_delay.ToNanoseconds() / 1e9)))
    return HTTP_STATUS.get(error.code(), 500), _to_json(status), headers


class RestShim:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel

    def add_routes(self, app: web.Application) -> None:
        for route in routes():
            app.router.add_route(route.http_method, route.path, self._handler(route))

    def _handler(self, route: Route):
        method = route.method
        request_type = getattr(llmproxy_pb2, method.input_type.name)
        response_type = getattr(llmproxy_pb2, method.output_type.name)
        factory = self.channel.unary_stream if method.server_streaming else self.channel.unary_unary
        call = factory(
            f"/{method.containing_service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                message = await self._parse(request, route, request_type)
            except json_format.ParseError as exc:
                return web.json_response(
                    {"code": 3, "message": str(exc), "details": []}, status=400
                )
            metadata = [(h, request.headers[h]) for h in FORWARDED_HEADERS if h in request.headers]
            timeout = _timeout(request)
            if method.server_streaming:
                return await self._stream(request, call, message, metadata, timeout)
            try:
                response = await call(message, metadata=metadata, timeout=timeout)
            except grpc.aio.AioRpcError as error:
                status, body, headers = _status_body(error)
                return web.json_response(body, status=status, headers=headers)
            if isinstance(response, llmproxy_pb2.DownloadResponse):
                return _file_response(response)
            return web.json_response(_to_json(response))

        return handle

    @staticmethod
    async def _parse(request: web.Request, route: Route, request_type) -> Message:
        message = request_type()
        if route.body == "*":
            raw = await request.read()
            try:
                body = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError as exc:
                raise json_format.ParseError(f"request body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                # ParseDict raises TypeError (a 500) for a bare number, null or boolean.
                raise json_format.ParseError("request body must be a JSON object")
            json_format.ParseDict(body, message)
        elif request.query:
            json_format.ParseDict(dict(request.query), message)
        return message

    @staticmethod
    async def _stream(request, call, message, metadata, timeout) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        stream = call(message, metadata=metadata, timeout=timeout)
        try:
            first = await stream.read()
        except grpc.aio.AioRpcError as error:
            status, body, headers = _status_body(error)
            return web.json_response(body, status=status, headers=headers)
        await response.prepare(request)
        try:
            item = first
            while item is not grpc.aio.EOF:
                await response.write(orjson.dumps({"result": _to_json(item)}) + b"\n")
                item = await stream.read()
        except grpc.aio.AioRpcError as error:
            _, body, _ = _status_body(error)
            await response.write(orjson.dumps({"error": body}) + b"\n")
        except (ConnectionResetError, OSError):
            stream.cancel()
            raise
        await response.write_eof()
        return response


def _timeout(request: web.Request) -> float | None:
    """grpc-gateway's Grpc-Timeout header, in seconds here (e.g. `2.5`)."""
    value = request.headers.get("grpc-timeout")
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    # inf, nan or 1e300 would overflow gRPC's deadline and fail at once as DEADLINE_EXCEEDED.
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(seconds, MAX_TIMEOUT_S)


def _file_response(response: llmproxy_pb2.DownloadResponse) -> web.Response:
    quoted = urllib.parse.quote(response.filename)
    ascii_name = response.filename.encode("ascii", "replace").decode().replace("?", "_")
    return web.Response(
        body=response.data,
        headers={
            "content-type": response.content_type,
            "content-disposition": (
                f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"
            ),
        },
    )
