"""One-at-a-time Python probes: time to first token, and checks that gRPC streams really succeed.

h2load cannot see the first token or gRPC trailers, so these small clients
do: a blocking gRPC client through the gateway, and a raw keep-alive socket
speaking HTTP/1.1 straight to the upstream (the cheapest client Python has, so
the direct figure is not inflated by client overhead).
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc

from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc


@dataclass
class ProbeResult:
    ttft_us: list[float] = field(default_factory=list)
    total_us: list[float] = field(default_factory=list)
    # gRPC status code name -> count; "OK" for every complete, correct stream.
    statuses: Counter = field(default_factory=Counter)
    wrong_text: int = 0
    proxy_overhead_us: list[int] = field(default_factory=list)
    # Serialised size of every message of the last stream, for the h2load byte check.
    message_sizes: list[int] = field(default_factory=list)
    # gRPC messages per stream: start, the deltas, done.
    messages: list[int] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get("OK", 0)


def probe_gateway(
    target: str, request: pb.QueryRequest, expected_text: str, count: int, timeout_s: float = 10
) -> ProbeResult:
    """`count` sequential Query streams through a blocking gRPC channel."""
    result = ProbeResult()
    with grpc.insecure_channel(target) as channel:
        stub = llmproxy_pb2_grpc.LLMProxyStub(channel)
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        for _ in range(count):
            parts: list[str] = []
            sizes: list[int] = []
            first = 0.0
            t0 = time.perf_counter()
            call = stub.Query(request, timeout=timeout_s)
            try:
                for response in call:
                    kind = response.WhichOneof("event")
                    sizes.append(response.ByteSize())
                    if kind == "delta":
                        if not first:
                            first = time.perf_counter()
                        parts.append(response.delta.text)
                    elif kind == "done":
                        result.proxy_overhead_us.append(response.done.metadata.proxy_overhead_us)
            except grpc.RpcError:
                pass
            end = time.perf_counter()
            code = call.code()
            result.statuses[code.name] += 1
            if code is not grpc.StatusCode.OK:
                continue
            if "".join(parts) != expected_text:
                result.wrong_text += 1
            result.ttft_us.append(((first or end) - t0) * 1e6)
            result.total_us.append((end - t0) * 1e6)
            result.message_sizes = sizes
            result.messages.append(len(sizes))
    return result


def http_request(port: int, body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"content-type: application/json\r\naccept: text/event-stream\r\n"
        b"authorization: Bearer sk-bench-not-a-secret\r\ncontent-length: %d\r\n\r\n%s"
        % (port, len(body), body)
    )


def probe_direct(port: int, body: bytes, count: int, timeout_s: float = 10) -> ProbeResult:
    """`count` sequential streams straight to the fake upstream over one keep-alive socket."""
    result = ProbeResult()
    request = http_request(port, body)
    first_token = b'"delta":{"content":"'
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            buf = bytearray()
            first = 0.0
            t0 = time.perf_counter()
            sock.sendall(request)
            while not buf.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("upstream closed the connection mid-stream")
                buf += data
                if not first and first_token in buf:
                    first = time.perf_counter()
            end = time.perf_counter()
            ok = buf.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in buf
            result.statuses["OK" if ok else "FAILED"] += 1
            result.ttft_us.append(((first or end) - t0) * 1e6)
            result.total_us.append((end - t0) * 1e6)
    return result
