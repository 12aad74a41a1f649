"""The gRPC servicer: converts proto messages to domain calls and domain events back."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from google.protobuf import timestamp_pb2

from llmproxy.server.api import convert
from llmproxy.server.api import usage as usage_api
from llmproxy.server.api.error_status import abort, code_for, internal_status, to_rpc_status
from llmproxy.server.core.documents import DocumentFormat, render_document
from llmproxy.server.core.parallel import ModelFailed, ParallelQueryService, Summary
from llmproxy.server.core.query import QueryService
from llmproxy.server.core.status import StatusService
from llmproxy.server.domain import CallContext, Completed, Started, TextDelta
from llmproxy.server.errors import (
    FieldViolation,
    InvalidRequestError,
    LLMProxyError,
    UnimplementedError,
)
from llmproxy.server.interceptors.identity import current_key_id, current_principal
from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc

log = logging.getLogger(__name__)

ROUTE_KEY_HEADER = "x-llmproxy-route-key"
_CIRCUIT_STATES = {
    "closed": pb.CIRCUIT_STATE_CLOSED,
    "open": pb.CIRCUIT_STATE_OPEN,
    "half_open": pb.CIRCUIT_STATE_HALF_OPEN,
}
_FORMATS = {
    pb.DOCUMENT_FORMAT_TXT: DocumentFormat.TXT,
    pb.DOCUMENT_FORMAT_PDF: DocumentFormat.PDF,
    pb.DOCUMENT_FORMAT_DOCX: DocumentFormat.DOCX,
    pb.DOCUMENT_FORMAT_MARKDOWN: DocumentFormat.MARKDOWN,
    pb.DOCUMENT_FORMAT_JSON: DocumentFormat.JSON,
}


def new_request_id() -> str:
    return uuid.uuid4().hex


def call_context(
    context: grpc.aio.ServicerContext, started_at: float, route_key: str = ""
) -> CallContext:
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return CallContext(
        key_id=current_key_id(),
        deadline_s=context.time_remaining(),
        route_key=route_key or metadata.get(ROUTE_KEY_HEADER, ""),
        traceparent=metadata.get("traceparent", ""),
        started_at=started_at,
    )


class LLMProxyServicer(llmproxy_pb2_grpc.LLMProxyServicer):
    def __init__(
        self,
        queries: QueryService,
        parallel: ParallelQueryService,
        status: StatusService,
        *,
        usage: usage_api.UsageSource | None = None,
    ) -> None:
        self.queries = queries
        self.parallel = parallel
        self.status = status
        self.usage = usage

    async def Query(
        self, request: pb.QueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.QueryResponse]:
        started = time.perf_counter()
        rid = request.request_id or new_request_id()
        try:
            query = convert.to_query_input(request, rid)
            ctx = call_context(context, started, request.route_key)
            # aclosing: when the caller leaves, the upstream call, breaker and usage record
            # are settled now, inside this RPC, not whenever the loop collects the generator.
            async with aclosing(self.queries.stream(query, ctx)) as events:
                async for event in events:
                    if type(event) is TextDelta:
                        yield pb.QueryResponse(request_id=rid, delta=pb.TextDelta(text=event.text))
                    elif type(event) is Started:
                        yield pb.QueryResponse(
                            request_id=rid,
                            start=pb.StreamStart(model=event.model, provider=event.provider),
                        )
                    elif type(event) is Completed:
                        yield pb.QueryResponse(request_id=rid, done=convert.to_done(event, rid))
        except LLMProxyError as error:
            await abort(context, to_rpc_status(error, rid))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("Query failed", extra={"request_id": rid})
            await abort(context, internal_status(rid))

    async def ParallelQuery(
        self, request: pb.ParallelQueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ParallelQueryResponse]:
        started = time.perf_counter()
        rid = request.request_id or new_request_id()
        try:
            query = convert.to_parallel_input(request, rid)
            models = list(request.models) or [
                d.name for d in self.queries.router.catalog.for_task(request.task_type)
            ]
            ctx = call_context(context, started)
            async with aclosing(self.parallel.stream(models, query, ctx)) as items:
                async for item in items:
                    yield self._parallel_response(item, rid)
        except LLMProxyError as error:
            await abort(context, to_rpc_status(error, rid))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("ParallelQuery failed", extra={"request_id": rid})
            await abort(context, internal_status(rid))

    @staticmethod
    def _parallel_response(item, rid: str) -> pb.ParallelQueryResponse:
        if isinstance(item, Summary):
            return pb.ParallelQueryResponse(
                request_id=rid,
                summary=pb.ParallelQuerySummary(
                    total_time_ms=item.total_time_ms,
                    succeeded=item.succeeded,
                    failed=item.failed,
                    total_cost_usd=item.total_cost_usd,
                ),
            )
        model, event = item
        if type(event) is TextDelta:
            return pb.ParallelQueryResponse(
                request_id=rid, model=model, delta=pb.TextDelta(text=event.text)
            )
        if type(event) is Started:
            return pb.ParallelQueryResponse(
                request_id=rid,
                model=model,
                start=pb.StreamStart(model=event.model, provider=event.provider),
            )
        if type(event) is Completed:
            return pb.ParallelQueryResponse(
                request_id=rid, model=model, done=convert.to_done(event, rid)
            )
        assert isinstance(event, ModelFailed)
        return pb.ParallelQueryResponse(
            request_id=rid,
            model=model,
            error=pb.StreamError(
                code=code_for(event.error).name,
                reason=event.error.reason,
                message=event.error.message,
            ),
        )

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusResponse:
        rid = new_request_id()
        try:
            views = await self.status.snapshot(refresh=request.refresh)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("Status failed", extra={"request_id": rid})
            await abort(context, internal_status(rid))
            raise  # unreachable: abort raises
        models = []
        for v in views:
            checked = timestamp_pb2.Timestamp()
            checked.FromDatetime(v.health.checked_at)
            models.append(
                pb.ModelStatus(
                    name=v.name,
                    provider=v.provider,
                    upstream_model=v.upstream_model,
                    available=v.health.available,
                    latency_ms=v.health.latency_ms,
                    circuit_state=_CIRCUIT_STATES.get(
                        v.circuit_state, pb.CIRCUIT_STATE_UNSPECIFIED
                    ),
                    last_error=v.last_error or v.health.error,
                    error_rate=v.error_rate,
                    in_flight=v.in_flight,
                    latency_p50_ms=v.latency_p50_ms,
                    latency_p95_ms=v.latency_p95_ms,
                    ttft_p50_ms=v.ttft_p50_ms,
                    ttft_p95_ms=v.ttft_p95_ms,
                    task_types=v.task_types,
                    checked_at=checked,
                )
            )
        return pb.StatusResponse(models=models)

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        rid = new_request_id()
        try:
            if self.usage is None:
                raise UnimplementedError("usage accounting is not configured")
            request = usage_api.restrict_to_caller(request, current_principal())
            rows = await self.usage.usage(usage_api.to_filter(request, time.time()))
            return usage_api.to_response(rows)
        except LLMProxyError as error:
            await abort(context, to_rpc_status(error, rid))
            raise  # unreachable: abort raises
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("GetUsage failed", extra={"request_id": rid})
            await abort(context, internal_status(rid))
            raise  # unreachable: abort raises

    async def Download(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.DownloadResponse:
        rid = new_request_id()
        fmt = _FORMATS.get(request.format)
        if fmt is None:
            error = InvalidRequestError(
                "format must be one of TXT, PDF, DOCX, MARKDOWN, JSON",
                [FieldViolation("format", "must be set to a supported document format")],
            )
            await abort(context, to_rpc_status(error, rid))
        # PDF and DOCX rendering is CPU work: keep it off the event loop.
        try:
            document = await asyncio.to_thread(
                render_document, request.content, fmt, request.filename
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Download failed", extra={"request_id": rid})
            await abort(context, internal_status(rid))
            raise  # unreachable: abort raises
        return pb.DownloadResponse(
            filename=document.filename, content_type=document.content_type, data=document.data
        )
