"""A zero-latency fake OpenAI Chat Completions upstream for benchmarks, run as its own process.

Every answer is precomputed bytes: a raw asyncio protocol on uvloop reads one
HTTP/1.1 request (keep-alive), skips the body and streams the same SSE reply
the real API sends (a role chunk, N content chunks, a finish chunk, a usage
chunk, `[DONE]`), each SSE event as its own HTTP chunk and its own socket
write. The cost per stream is a few microseconds, so what a benchmark sees is
the client's or the gateway's cost, not this server's. With `--interval-ms`, the
content chunks are spaced as a model generates them, so each reaches the gateway
in a read of its own (and leaves it as a gRPC message of its own).

    python bench/fake_upstream.py --port 0 --chunks 20   # prints "READY <port>"

`GET /stats` answers `{"streams": <answers streamed so far>}`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import orjson

MODEL = "bench-model"
PROMPT_TOKENS = 12


def sse_chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    """One Chat Completions stream chunk as an SSE event inside one HTTP/1.1 chunk."""
    body: dict = {
        "id": "chatcmpl-bench0123456789",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": []
        if usage is not None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    return http_chunk(b"data: " + orjson.dumps(body) + b"\n\n")


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def token(i: int) -> str:
    return f" tok{i}"


def build_stream(chunks: int) -> list[bytes]:
    """The socket writes of one streamed answer, response head included."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": chunks,
        "total_tokens": PROMPT_TOKENS + chunks,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    return [
        head + sse_chunk({"role": "assistant", "content": ""}),
        *(sse_chunk({"content": token(i)}) for i in range(chunks)),
        sse_chunk({}, "stop"),
        sse_chunk({}, usage=usage),
        http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n",
    ]


def expected_text(chunks: int) -> str:
    return "".join(token(i) for i in range(chunks))


def build_models() -> bytes:
    body = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"


class Counter:
    """Answers streamed so far, so a benchmark can prove every stream really came here."""

    __slots__ = ("streams",)

    def __init__(self) -> None:
        self.streams = 0

    def response(self) -> bytes:
        body = orjson.dumps({"streams": self.streams})
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(body), body)
        )


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection: parse request heads, skip bodies, write canned answers."""

    __slots__ = ("buffer", "counter", "interval_s", "models", "stream", "transport")

    def __init__(
        self, stream: list[bytes], models: bytes, counter: Counter, interval_s: float = 0.0
    ) -> None:
        self.stream = stream
        self.models = models
        self.counter = counter
        self.interval_s = interval_s
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(buf[:end]).lower()
            length = 0
            if (at := head.find(b"content-length:")) >= 0:
                line_end = head.find(b"\r\n", at)
                length = int(head[at + 15 : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(buf) < total:
                return
            del buf[:total]
            self.respond(head)

    def respond(self, head: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if head.startswith(b"post ") and b"/chat/completions " in head:
            self.counter.streams += 1
            if self.interval_s:
                self.pace(0, close=b"connection: close" in head)
                return
            for part in self.stream:
                transport.write(part)
        elif head.startswith(b"get ") and b"/models " in head:
            transport.write(self.models)
        elif head.startswith(b"get /stats "):
            transport.write(self.counter.response())
        else:
            transport.write(NOT_FOUND)
        if b"connection: close" in head:
            transport.close()

    def pace(self, i: int, close: bool) -> None:
        """Write part `i` (the head and role chunk first), the next one `interval_s` later."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(self.stream[i])
        if i + 1 < len(self.stream):
            asyncio.get_running_loop().call_later(self.interval_s, self.pace, i + 1, close)
        elif close:
            transport.close()


async def serve(host: str, port: int, chunks: int, interval_ms: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    stream, models, counter = build_stream(chunks), build_models(), Counter()
    server = await loop.create_server(
        lambda: UpstreamProtocol(stream, models, counter, interval_ms / 1000),
        host,
        port,
        backlog=1024,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per answer")
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="time between an answer's chunks"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.host, args.port, args.chunks, args.interval_ms))
    else:
        uvloop.run(serve(args.host, args.port, args.chunks, args.interval_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
