"""Measures the floor under the gateway: what grpc.aio and a bare relay cost on this machine.

Three stripped-down servers answer the same `Query` over gRPC, each in its own process, under
the same h2load load as bench/proxy.py:

  bare      a servicer that writes three prebuilt messages (start, delta, done): grpc.aio alone;
  raw       a relay to the fake upstream over a raw asyncio HTTP/1.1 client (httptools) and our
            Chat Completions decoder, nothing else: the cheapest relay this stack allows;
  provider  the same relay through our provider adapter (httpx API on our transport).

If the gateway must add less than X to a stream, `bare` says how much of X grpc.aio takes
before any work is done. With `--processes N`, N copies of each server share one port
(SO_REUSEPORT, as `llmproxy serve --workers N` does): the ceiling for N workers here.
Prints a Markdown table; loopback only, fixed stream counts.

    .venv/bin/python bench/floor.py [--streams 10000] [--processes 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

MODEL, PROVIDER, RID = "bench", "fake", "0" * 32


async def serve(kind: str, upstream_port: int, port: int) -> None:
    """One server of `kind`; prints `PORT <n>` once it listens."""
    import grpc

    from llmproxy.v1 import llmproxy_pb2 as pb
    from llmproxy.v1 import llmproxy_pb2_grpc as pb_grpc

    start = pb.QueryResponse(request_id=RID, start=pb.StreamStart(model=MODEL, provider=PROVIDER))
    done = pb.QueryResponse(request_id=RID, done=pb.StreamDone(model=MODEL, provider=PROVIDER))
    relay = _relay(kind, upstream_port) if kind != "bare" else None

    class Servicer(pb_grpc.LLMProxyServicer):
        async def Query(self, request, context):
            if relay is None:
                yield start
                yield pb.QueryResponse(request_id=RID, delta=pb.TextDelta(text=" tok" * 20))
                yield done
                return
            first = True
            async for text in relay(request.query):
                if first:
                    first = False
                    yield start
                yield pb.QueryResponse(request_id=RID, delta=pb.TextDelta(text=text))
            yield done

    server = grpc.aio.server()
    pb_grpc.add_LLMProxyServicer_to_server(Servicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    gc.freeze()
    print("PORT", port, flush=True)
    await server.wait_for_termination()


def _relay(kind: str, upstream_port: int):
    """query -> async iterator of answer text, one item per network read."""
    import orjson

    from llmproxy.server.domain import ChatRequest, Message, Role, TextDelta
    from llmproxy.server.providers.openai_compat import ChunkDecoder, build_body

    def chat(query: str) -> ChatRequest:
        return ChatRequest(model="bench-model", messages=(Message(Role.USER, query),))

    if kind == "provider":
        from proxy_procs import gateway_config

        from llmproxy.server.app import build_provider
        from llmproxy.server.config.loader import load_settings

        config = Path(f"/tmp/llmproxy-floor-{upstream_port}.yaml")
        config.write_text(gateway_config(upstream_port))
        settings = load_settings(str(config))
        provider, _ = build_provider(settings.providers[0], settings)

        async def via_provider(query: str):
            async for event in provider.stream(chat(query)):
                if type(event) is TextDelta:
                    yield event.text

        return via_provider

    import httptools

    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\nauthorization: Bearer sk-bench-not-a-secret\r\n"
        b"content-length: %d\r\n\r\n"
    )
    idle: list[_RawConnection] = []

    async def via_raw(query: str):
        body = orjson.dumps(build_body(chat(query)))
        if idle:
            conn = idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(_RawConnection, "127.0.0.1", upstream_port)
        conn.parser = httptools.HttpResponseParser(conn)
        conn.done = False
        conn.transport.write(head % len(body) + body)
        decoder = ChunkDecoder(PROVIDER, RuntimeError)
        while True:
            if conn.body:
                data, conn.body = b"".join(conn.body), []
                if text := decoder.feed(data):
                    yield text
            elif conn.done:
                break
            else:
                conn.waiter = asyncio.get_running_loop().create_future()
                await conn.waiter
        idle.append(conn)

    return via_raw


class _RawConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.done = False
        self.waiter: asyncio.Future | None = None
        self.parser = None
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def measure(
    kinds: list[str], streams: int, processes: int = 1, interval_ms: float = 0.0
) -> list[dict]:
    from proxy_h2load import GRPC_HEADERS, QUERY_PATH, grpc_frame, run_h2load
    from proxy_procs import cpu_seconds, free_port, spawn, start_upstream, wait_for_line

    from llmproxy.v1 import llmproxy_pb2 as pb

    rows = []
    workdir = BENCH_DIR / "results" / "floor"
    workdir.mkdir(parents=True, exist_ok=True)
    body = workdir / "query.grpc"
    query = pb.QueryRequest(query="Write one short sentence about benchmarks.", model=MODEL)
    body.write_bytes(grpc_frame(query.SerializeToString()))
    upstream = start_upstream(20, workdir, interval_ms)
    try:
        for kind in kinds:
            # One process picks its own port; several share a fixed one.
            port = free_port() if processes > 1 else 0
            argv = [sys.executable, __file__, "--serve", kind, "--upstream", str(upstream.port)]
            argv += ["--port", str(port)]
            procs = [spawn(kind, argv, workdir / f"{kind}-{i}.log") for i in range(processes)]
            try:
                for proc in procs:
                    port = int(wait_for_line(proc, lambda s: s.startswith("PORT "), 60).split()[1])

                def load(c: int, n: int, tag: str, port: int = port, kind: str = kind):
                    return run_h2load(
                        f"http://127.0.0.1:{port}{QUERY_PATH}",
                        body_file=body,
                        headers=GRPC_HEADERS,
                        requests=n,
                        concurrency=c,
                        # The kernel spreads connections, not streams, over processes.
                        streams_per_connection=16 if processes == 1 else 4,
                        h1=False,
                        log_file=workdir / f"h2load-{kind}-{tag}.log",
                        timeout_s=120,
                    )

                load(64, 2000, "warmup")
                cpu0 = sum(cpu_seconds(proc.pid) for proc in procs)
                busy = load(64, streams, "c64")
                cpu = sum(cpu_seconds(proc.pid) for proc in procs) - cpu0
                cpu = cpu / max(busy.succeeded, 1) * 1000
                single = load(1, streams // 5, "c1")
                # A failed gRPC stream is an HTTP 200 to h2load; a whole answer is over 200 bytes.
                ok = busy.succeeded == streams and single.succeeded == streams // 5
                ok = ok and busy.bytes_per_stream > 200
                rows.append(
                    {
                        "server": kind,
                        "ok": ok,
                        "streams_per_s_c64": round(busy.streams_per_s),
                        "cpu_ms_per_stream_c64": round(cpu, 3),
                        "p50_ms_c1": round(single.percentile_ms(0.5), 3),
                        "p99_ms_c1": round(single.percentile_ms(0.99), 3),
                    }
                )
            finally:
                for proc in procs:
                    proc.stop()
    finally:
        upstream.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10000, help="streams at 64 concurrent")
    parser.add_argument("--processes", type=int, default=1, help="processes per server")
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="the fake upstream's time between chunks"
    )
    parser.add_argument("--serve", choices=("bare", "raw", "provider"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.upstream, args.port))
        return 0
    rows = measure(["bare", "raw", "provider"], args.streams, args.processes, args.interval_ms)
    print("| Server | Streams/s, 64 concurrent | CPU per stream | 1 stream p50 / p99 |")
    print("|---|---|---|---|")
    for r in rows:
        flag = "" if r["ok"] else " (streams failed)"
        print(
            f"| {r['server']}{flag} | {r['streams_per_s_c64']:,} /s | "
            f"{r['cpu_ms_per_stream_c64']:.2f} ms | "
            f"{r['p50_ms_c1']:.2f} / {r['p99_ms_c1']:.2f} ms |"
        )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
