"""The HTTP half every streaming chat adapter shares: send with key failover, read via a decoder.

An adapter supplies pure pieces (URL, body, auth header, a stream decoder, an
error classifier); this module owns the only I/O: one POST per key tried, the
streamed body fed to the decoder read by read, and the models listing.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from functools import partial
from typing import Any, ClassVar, Protocol, TypeVar

import httpx
import orjson

from llmproxy.server.domain import ChatRequest, Finish, ProviderEvent, TextDelta
from llmproxy.server.errors import UpstreamError, UpstreamProtocolError
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.errors import (
    classify_status,
    classify_transport_error,
    key_cooldown_s,
)
from llmproxy.server.providers.keys import KeyPool

log = logging.getLogger(__name__)

T = TypeVar("T")
# The most of an error answer we read: enough for any real error object, while an
# upstream sending megabytes (or an endless body) cannot fill memory or hold the call.
MAX_ERROR_BODY = 64 * 1024
Lease = tuple[str, str] | None  # (secret, label) from the KeyPool; None without keys
# What a pure parser raises on valid JSON of the wrong shape (null, a string for an object).
SHAPE_ERRORS = (AttributeError, IndexError, KeyError, TypeError, ValueError)


class StreamDecoder(Protocol):
    """Pure: raw body bytes in as they arrive, answer text out; no I/O."""

    done: bool

    def feed(self, data: bytes) -> str:
        """Text completed by `data`; raises UpstreamError for an error in the stream."""

    def finish(self) -> Finish:
        """The closing event; raises UpstreamUnavailableError when the terminator never came."""


def option(settings: ProviderSettings, name: str, kind: type[T], default: T) -> T:
    """A provider option from config, type-checked once at start with an error naming it."""
    value = settings.options.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(
            f"providers[{settings.name}].options.{name} must be a {kind.__name__}, "
            f"not {type(value).__name__}"
        )
    return value


async def read_bounded(response: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """At most `limit` bytes of the body; the rest is never read (the connection closes)."""
    chunks: list[bytes] = []
    size = 0
    async with contextlib.aclosing(response.aiter_bytes()) as reader:
        async for chunk in reader:
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    return b"".join(chunks)[:limit]


def body_excerpt(body: bytes) -> str:
    return body[:300].decode("utf-8", "replace").strip()


class HttpChatProvider(Provider):
    """Streams one POST per call; on a refused key, rests it and retries with another."""

    accept: ClassVar[str] = "text/event-stream"

    def __init__(
        self, settings: ProviderSettings, client: httpx.AsyncClient | None, keys: KeyPool
    ) -> None:
        super().__init__(settings, client, keys)
        self._headers = {"accept": self.accept, **self.static_headers(), **settings.headers}

    # --- what each adapter supplies (pure) ------------------------------------

    @abc.abstractmethod
    def url(self, request: ChatRequest) -> str: ...

    @abc.abstractmethod
    def build_body(self, request: ChatRequest) -> dict[str, Any]: ...

    @abc.abstractmethod
    def new_decoder(self) -> StreamDecoder: ...

    def static_headers(self) -> dict[str, str]:
        """Headers every call carries (versions, organisation); config headers override them."""
        return {}

    def auth_headers(self, secret: str) -> dict[str, str]:
        return {"authorization": f"Bearer {secret}"}

    def authorize(
        self, headers: dict[str, str], secret: str, method: str, url: str, content: bytes
    ) -> None:
        """Add credentials to `headers`; request-signing schemes (SigV4) override this."""
        headers.update(self.auth_headers(secret))

    def classify_error(self, status: int, headers: httpx.Headers, body: bytes) -> UpstreamError:
        return classify_status(status, body_excerpt(body), provider=self.name, headers=headers)

    def finish_from_error(self, status: int, body: bytes) -> Finish | None:
        """A non-200 answer that is really an ending (e.g. a content filter); None otherwise."""
        return None

    def models_url(self) -> str | None:
        """Where the provider lists its models; None when it cannot."""
        return None

    def parse_models(self, body: dict[str, Any]) -> list[str]:
        return [m["id"] for m in body.get("data", ())]

    # --- I/O --------------------------------------------------------------------

    def _request_headers(
        self,
        lease: Lease,
        method: str,
        url: str,
        content: bytes = b"",
        extra: Iterable[tuple[str, str]] = (),
    ) -> dict[str, str]:
        headers = dict(self._headers)
        if method == "POST":
            headers["content-type"] = "application/json"
        else:
            headers["accept"] = "application/json"
        headers.update(extra)
        if lease is not None:
            self.authorize(headers, lease[0], method, url, content)
        return headers

    def _refused(self, lease: Lease, error: UpstreamError, tried: list[str]) -> Lease:
        """Rest the key `error` blames; return another ready key to retry with, or None."""
        if lease is None or (seconds := key_cooldown_s(error)) is None:
            return None
        label = lease[1]
        self.keys.cool_down(label, seconds)
        log.warning(
            "provider %s: %s rests %.0f s after %s", self.name, label, seconds, error.reason
        )
        tried.append(label)
        return self.keys.acquire_ready(tried)

    def _error(self, response: httpx.Response, body: bytes, lease: Lease) -> UpstreamError:
        if lease is not None:
            # An upstream that echoes our key must not leak it into messages or logs.
            body = body.replace(lease[0].encode(), b"[redacted]")
        try:
            return self.classify_error(response.status_code, response.headers, body)
        except SHAPE_ERRORS:
            # An error body of an unexpected shape: the status alone still classifies it.
            status, excerpt = response.status_code, body_excerpt(body)
            return classify_status(status, excerpt, provider=self.name, headers=response.headers)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        assert self.client is not None, "an HTTP adapter needs a client"
        content = orjson.dumps(self.build_body(request))
        url = self.url(request)
        lease = self.keys.acquire()
        tried: list[str] = []
        try:
            while True:
                headers = self._request_headers(lease, "POST", url, content, request.headers)
                async with self.client.stream(
                    "POST", url, content=content, headers=headers
                ) as response:
                    if response.status_code == 200:
                        # aclosing: a caller that stops early closes the reader at once.
                        async with contextlib.aclosing(self._read(response)) as events:
                            async for event in events:
                                yield event
                        return
                    body = await read_bounded(response)
                if (finish := self.finish_from_error(response.status_code, body)) is not None:
                    yield finish
                    return
                error = self._error(response, body, lease)
                if (lease := self._refused(lease, error, tried)) is None:
                    raise error
        except httpx.TransportError as exc:
            raise classify_transport_error(exc, provider=self.name) from None
        except httpx.DecodingError:
            raise self._undecodable() from None

    def _malformed(self) -> UpstreamProtocolError:
        return UpstreamProtocolError(f"{self.name}: malformed stream chunk", provider=self.name)

    def _undecodable(self) -> UpstreamProtocolError:
        """A body its content-encoding cannot decode (broken gzip): the upstream's fault."""
        return UpstreamProtocolError(f"{self.name}: undecodable response body", provider=self.name)

    async def _read(self, response: httpx.Response) -> AsyncIterator[ProviderEvent]:
        decoder = self.new_decoder()
        # Unencoded (as SSE answers are), the raw bytes are the body: no decoder per read,
        # and the response's own stream, closed below, not left for the event loop to
        # finalise as aiter_raw's inner generator is (a task and a wake-up per response).
        identity = "content-encoding" not in response.headers
        reader = aiter(response.stream) if identity else response.aiter_bytes()
        # Bytes already received, without waiting: for the first delta's `more`.
        take_ready = response.extensions.get("take_ready") if identity else None
        first = True
        async with contextlib.aclosing(reader) as chunks:
            async for data in chunks:
                try:
                    text = decoder.feed(data)
                except SHAPE_ERRORS:
                    raise self._malformed() from None
                if text:
                    ready = take_ready if first else None
                    first = False
                    yield TextDelta(text, more=ready and partial(self._more, decoder, ready))
                if decoder.done:
                    # The answer ends at the terminator; what follows on the wire (the
                    # chunked encoding's end) the pool may read in the background.
                    if (read_rest := response.extensions.get("finish_in_background")) is not None:
                        read_rest()
                    break
        try:
            finish = decoder.finish()
        except SHAPE_ERRORS:
            raise self._malformed() from None
        yield finish

    def _more(self, decoder: StreamDecoder, take_ready: Callable[[], bytes]) -> str:
        """The text of the bytes received since the last read, read now, not waited for."""
        data = take_ready()
        if not data:
            return ""
        try:
            return decoder.feed(data)
        except SHAPE_ERRORS:
            raise self._malformed() from None

    async def list_models(self) -> list[str]:
        url = self.models_url()
        if url is None:
            return []
        assert self.client is not None, "an HTTP adapter needs a client"
        lease = self.keys.acquire()
        tried: list[str] = []
        while True:
            headers = self._request_headers(lease, "GET", url)
            try:
                async with self.client.stream("GET", url, headers=headers) as response:
                    ok = response.status_code == 200
                    body = await (response.aread() if ok else read_bounded(response))
            except httpx.TransportError as exc:
                raise classify_transport_error(exc, provider=self.name) from None
            except httpx.DecodingError:
                raise self._undecodable() from None
            if ok:
                try:
                    return self.parse_models(orjson.loads(body))
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise UpstreamProtocolError(
                        f"{self.name}: malformed models list", provider=self.name, status=200
                    ) from None
            error = self._error(response, body, lease)
            if (lease := self._refused(lease, error, tried)) is None:
                raise error
