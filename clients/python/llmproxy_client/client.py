"""Thin clients over the generated stubs: credentials, deadlines, and stream iteration."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc

Messages = Sequence[tuple[str, str]]  # (role, content): role is system, user or assistant

_ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT}


@dataclass
class QueryResult:
    """A whole answer, gathered from a Query stream."""

    text: str
    done: pb.StreamDone
    request_id: str
    events: list[pb.QueryResponse] = field(default_factory=list, repr=False)


def to_result(events: list[pb.QueryResponse]) -> QueryResult:
    text = "".join(e.delta.text for e in events if e.WhichOneof("event") == "delta")
    done = next((e.done for e in events if e.WhichOneof("event") == "done"), pb.StreamDone())
    return QueryResult(text, done, events[0].request_id if events else "", events)


def build_query_request(
    query: str = "",
    *,
    messages: Messages = (),
    model: str = "",
    task_type: str = "",
    temperature: float | None = None,
    max_tokens: int | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
    request_id: str = "",
    cache: pb.CacheOptions | None = None,
    route_key: str = "",
) -> pb.QueryRequest:
    return pb.QueryRequest(
        query=query,
        messages=[pb.Message(role=_ROLES[role], content=content) for role, content in messages],
        model=model,
        task_type=task_type,
        parameters=build_parameters(temperature, max_tokens, top_p, stop, seed),
        request_id=request_id,
        cache=cache,
        route_key=route_key,
    )


def build_parameters(temperature=None, max_tokens=None, top_p=None, stop=(), seed=None):
    params = pb.Parameters(stop=list(stop))
    if temperature is not None:
        params.temperature = temperature
    if max_tokens is not None:
        params.max_tokens = max_tokens
    if top_p is not None:
        params.top_p = top_p
    if seed is not None:
        params.seed = seed
    return params


def build_usage_request(
    start: datetime | None = None, end: datetime | None = None, key_id: str = "", model: str = ""
) -> pb.GetUsageRequest:
    """Unset start: from the first record; unset end: up to now. Naive datetimes are UTC."""
    request = pb.GetUsageRequest(key_id=key_id, model=model)
    for name, value in (("start_time", start), ("end_time", end)):
        if value is not None:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(value)
            getattr(request, name).CopyFrom(stamp)
    return request


API_KEY_HEADERS = ("authorization", "x-api-key")


def _metadata(
    api_key: str | None, extra: Sequence[tuple[str, str]] = (), header: str = "authorization"
) -> list[tuple[str, str]]:
    """The key as `authorization: Bearer <key>` (default) or `x-api-key: <key>`."""
    if not api_key:
        md = []
    elif header == "x-api-key":
        md = [("x-api-key", api_key)]
    else:
        md = [("authorization", f"Bearer {api_key}")]
    return md + list(extra)


class _Client:
    """What both clients share: the stub, the caller's key, the default deadline, and the
    per-call options built from them."""

    def __init__(
        self,
        open_channel: Callable[[], Any],
        api_key: str | None,
        api_key_header: str,
        timeout: float | None,
    ) -> None:
        # Checked before the channel opens, so a bad argument leaks nothing.
        if api_key_header not in API_KEY_HEADERS:
            raise ValueError(f"api_key_header must be one of {API_KEY_HEADERS}")
        self.channel = open_channel()
        self.stub = llmproxy_pb2_grpc.LLMProxyStub(self.channel)
        self.api_key = api_key
        self.api_key_header = api_key_header
        self.timeout = timeout

    def _options(
        self, timeout: float | None, metadata: Sequence[tuple[str, str]] = ()
    ) -> dict[str, Any]:
        """`timeout` (or the client's default) and the key followed by `metadata`."""
        return {
            "timeout": timeout or self.timeout,
            "metadata": _metadata(self.api_key, metadata, self.api_key_header),
        }


class AsyncLLMProxyClient(_Client):
    """Async client; use as `async with AsyncLLMProxyClient("localhost:50051") as client:`."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        api_key_header: str = "authorization",
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        def open_channel() -> grpc.aio.Channel:
            if channel is not None:
                return channel
            if credentials:
                return grpc.aio.secure_channel(target, credentials)
            return grpc.aio.insecure_channel(target)

        super().__init__(open_channel, api_key, api_key_header, timeout)

    async def __aenter__(self) -> AsyncLLMProxyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def stream(
        self,
        request: pb.QueryRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[pb.QueryResponse]:
        """Query events as they arrive: start, deltas, done."""
        return self.stub.Query(request, **self._options(timeout, metadata))

    async def query(self, query: str = "", **kwargs) -> QueryResult:
        """Send a Query and gather the whole answer."""
        options = {"timeout": kwargs.pop("timeout", None), "metadata": kwargs.pop("metadata", ())}
        request = build_query_request(query, **kwargs)
        return to_result([e async for e in self.stream(request, **options)])

    def parallel(
        self,
        request: pb.ParallelQueryRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[pb.ParallelQueryResponse]:
        return self.stub.ParallelQuery(request, **self._options(timeout, metadata))

    async def status(
        self, *, refresh: bool = False, timeout: float | None = None
    ) -> pb.StatusResponse:
        return await self.stub.Status(pb.StatusRequest(refresh=refresh), **self._options(timeout))

    async def download(
        self,
        content: str,
        fmt: pb.DocumentFormat = pb.DOCUMENT_FORMAT_TXT,
        filename: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.DownloadResponse:
        request = pb.DownloadRequest(content=content, format=fmt, filename=filename)
        return await self.stub.Download(request, **self._options(timeout))

    async def usage(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        key_id: str = "",
        model: str = "",
        timeout: float | None = None,
    ) -> pb.GetUsageResponse:
        """Spend and tokens by UTC day, key and model from the gateway's usage ledger."""
        request = build_usage_request(start, end, key_id, model)
        return await self.stub.GetUsage(request, **self._options(timeout))


class LLMProxyClient(_Client):
    """Blocking client for scripts; same methods as the async one."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        api_key: str | None = None,
        api_key_header: str = "authorization",
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        def open_channel() -> grpc.Channel:
            if credentials:
                return grpc.secure_channel(target, credentials)
            return grpc.insecure_channel(target)

        super().__init__(open_channel, api_key, api_key_header, timeout)

    def __enter__(self) -> LLMProxyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def stream(
        self,
        request: pb.QueryRequest,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Iterator[pb.QueryResponse]:
        return self.stub.Query(request, **self._options(timeout, metadata))

    def query(self, query: str = "", **kwargs) -> QueryResult:
        options = {"timeout": kwargs.pop("timeout", None), "metadata": kwargs.pop("metadata", ())}
        request = build_query_request(query, **kwargs)
        return to_result(list(self.stream(request, **options)))

    def parallel(
        self, request: pb.ParallelQueryRequest, *, timeout: float | None = None
    ) -> Iterator[pb.ParallelQueryResponse]:
        return self.stub.ParallelQuery(request, **self._options(timeout))

    def status(self, *, refresh: bool = False, timeout: float | None = None) -> pb.StatusResponse:
        return self.stub.Status(pb.StatusRequest(refresh=refresh), **self._options(timeout))

    def download(
        self,
        content: str,
        fmt: pb.DocumentFormat = pb.DOCUMENT_FORMAT_TXT,
        filename: str = "",
        *,
        timeout: float | None = None,
    ) -> pb.DownloadResponse:
        request = pb.DownloadRequest(content=content, format=fmt, filename=filename)
        return self.stub.Download(request, **self._options(timeout))

    def usage(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        key_id: str = "",
        model: str = "",
        timeout: float | None = None,
    ) -> pb.GetUsageResponse:
        request = build_usage_request(start, end, key_id, model)
        return self.stub.GetUsage(request, **self._options(timeout))
