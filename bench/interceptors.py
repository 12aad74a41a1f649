"""Benchmarks what the interceptor chain costs per request: everything off vs on.

Measured in one run, loopback only, each with a fixed count, stopping by itself:

  1. in process, the chain alone: the handler a real server would run is resolved
     through `build_interceptors(app)` and invoked with a stand-in servicer context,
     for a Query stream (start, 20 deltas, done) and a unary Status. Rows, each
     adding to the one before: no interceptors; the default chain (access log +
     metrics, auth off); API key auth; memory rate limits; tracing (spans batched
     to a null exporter), i.e. everything; then Redis rate limits instead of memory
     (one Lua round trip to 127.0.0.1:6379 per request). Mean µs per request of the
     fastest batch, rows interleaved.
  2. end to end over gRPC: a gateway subprocess per row serving the zero-delay mock
     provider, called one request at a time by a blocking client here. p50/p99 µs;
     the chain's share is the difference from the bare row (noisier: 2 shared cores).

Access logs are formatted as JSON and written to /dev/null, so their cost counts.
Prints a Markdown table and writes JSON to bench/results/.

    .venv/bin/python bench/interceptors.py [--requests 2000] [--no-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson

from llmproxy.client.client import build_query_request
from llmproxy.server.security.api_keys import generate_key, hash_key
from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc

RESULTS = Path(__file__).parent / "results"
KEY = generate_key()
MOCK = {
    "providers": [{"name": "mock", "type": "mock", "options": {"ttft_ms": 0, "tokens_per_s": 0}}],
    "models": [{"name": "fast", "provider": "mock", "upstream_model": "mock-fast"}],
    "ledger": {"backend": "none"},
    "cache": {"exact": {"enabled": False}, "coalesce": False},
    "logging": {"level": "INFO", "format": "json"},
}
HUGE = {"requests_per_minute": 1e9, "tokens_per_minute": 1e12}


MODES = ["bare", "default", "+auth", "+limits", "all", "all+redis"]


def config(mode: str, redis_prefix: str) -> dict[str, Any]:
    """One row's gateway config; each row adds to the one before it.

    bare: no interceptors at all. default: access log + metrics (auth off).
    +auth: API key auth. +limits: memory rate limits. all: tracing too.
    all+redis: rate limits in Redis instead of memory.
    """
    cfg: dict[str, Any] = {**MOCK, "server": {"host": "127.0.0.1"}}
    level = MODES.index(mode)
    if level >= MODES.index("+auth"):
        cfg["auth"] = {"enabled": True, "api_keys": [{"id": "bench", "hash": hash_key(KEY)}]}
    if level >= MODES.index("+limits"):
        backend = "redis" if mode == "all+redis" else "memory"
        cfg["rate_limits"] = {"backend": backend, "key_prefix": redis_prefix, "default": HUGE}
    if level >= MODES.index("all"):
        cfg["tracing"] = {"enabled": True}
    return cfg


def install_null_tracing() -> None:
    """An SDK provider batching spans to an exporter that drops them: span cost, no network."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class NullExporter(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    trace.set_tracer_provider(provider)


def logs_to_devnull() -> None:
    from llmproxy.server.logs import JsonFormatter

    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as we do
    handler.setFormatter(JsonFormatter())
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger().setLevel(logging.INFO)


# --- 1. the chain in process ----------------------------------------------------------


class StandInContext:
    """What the interceptors call on a grpc.aio.ServicerContext, with nothing behind it."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata
        self._code = None

    def invocation_metadata(self):
        return self._metadata

    def code(self):
        return self._code

    def set_code(self, code):
        self._code = code

    def set_details(self, details):
        pass

    def peer(self):
        return "ipv4:127.0.0.1:50000"

    def auth_context(self):
        return {}

    def time_remaining(self):
        return None

    async def abort(self, code, details="", trailing_metadata=()):
        self._code = code
        raise RuntimeError(f"aborted: {code} {details}")


class Metadatum(NamedTuple):
    key: str
    value: str


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata) -> None:
        self.method = method
        self.invocation_metadata = metadata


def stream_messages() -> list[pb.QueryResponse]:
    done = pb.StreamDone(
        model="fast",
        provider="mock",
        metadata=pb.ResponseMetadata(
            input_tokens=12, output_tokens=20, time_to_first_token_ms=1, proxy_overhead_us=90
        ),
    )
    return [
        pb.QueryResponse(request_id="r", start=pb.StreamStart(model="fast", provider="mock")),
        *(pb.QueryResponse(request_id="r", delta=pb.TextDelta(text=" word")) for _ in range(20)),
        pb.QueryResponse(request_id="r", done=done),
    ]


async def resolve(chain, details: Details, final: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """What grpc.aio does per RPC: each interceptor gets a continuation to the next."""

    async def step(i: int, d) -> grpc.RpcMethodHandler:
        if i == len(chain):
            return final
        return await chain[i].intercept_service(lambda nd: step(i + 1, nd), d)

    return await step(0, details)


async def build_case(mode: str, redis_prefix: str):
    """One row's chain and a function running one Query stream and one Status through it."""
    from llmproxy.server import app as app_module
    from llmproxy.server.config import Settings
    from llmproxy.server.interceptors import build_interceptors

    cfg = config(mode, redis_prefix)
    cfg["server"] = {"host": "127.0.0.1", "grpc_port": 0, "http_port": -1}
    app = app_module.build_app(Settings(**cfg))
    chain = [] if mode == "bare" else build_interceptors(app)
    messages = stream_messages()
    status = pb.StatusResponse(models=[pb.ModelStatus(name="fast", provider="mock")])

    async def query_behavior(request, context):
        for m in messages:
            yield m

    async def status_behavior(request, context):
        return status

    query_handler = grpc.unary_stream_rpc_method_handler(query_behavior)
    status_handler = grpc.unary_unary_rpc_method_handler(status_behavior)
    metadata = (Metadatum("authorization", f"Bearer {KEY}"),)
    query_details = Details("/llmproxy.v1.LLMProxy/Query", metadata)
    status_details = Details("/llmproxy.v1.LLMProxy/Status", metadata)

    async def one_query() -> None:
        handler = await resolve(chain, query_details, query_handler)
        request = pb.QueryRequest(query="hello there", model="fast")
        async for _ in handler.unary_stream(request, StandInContext(metadata)):
            pass

    async def one_status() -> None:
        handler = await resolve(chain, status_details, status_handler)
        await handler.unary_unary(pb.StatusRequest(), StandInContext(metadata))

    return app, {"query": one_query, "status": one_status}


async def chain_costs(modes: list[str], n: int, redis_prefix: str) -> dict[str, dict[str, float]]:
    """Mean µs per request; rows interleaved in batches and the fastest batch kept, so
    other load on the machine (which only ever adds time) mostly drops out."""
    cases = {m: await build_case(m, redis_prefix) for m in modes}
    batch = max(1, min(200, n // 10))
    best = {m: {"query": float("inf"), "status": float("inf")} for m in modes}
    for _ in range(max(1, n // batch)):
        for mode, (_, calls) in cases.items():
            for name, call in calls.items():
                t0 = time.perf_counter()
                for _ in range(batch):
                    # grpc.aio runs each RPC in its own task with a fresh context: so do we.
                    await asyncio.create_task(call(), context=contextvars.Context())
                mean = (time.perf_counter() - t0) / batch * 1e6
                best[mode][name] = min(best[mode][name], mean)
    for app, _ in cases.values():
        await asyncio.gather(*(close() for close in app.on_stop))
        await asyncio.gather(*(c.aclose() for c in app.http_clients))
    return best


# --- 2. end to end ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(mode: str, path: str, port: int) -> None:
    """The gateway subprocess of one row (this script re-run with --serve)."""
    from llmproxy.server import app as app_module
    from llmproxy.server.config import load_settings
    from llmproxy.server.main import run

    if mode == "bare":
        app_module.build_interceptors = lambda app: []  # the floor: no chain at all
    if "tracing" in config(mode, ""):
        install_null_tracing()
    settings = load_settings(path, overrides={"server": {"grpc_port": port, "http_port": -1}})
    logs_to_devnull()
    import llmproxy.server.main as main_module

    main_module.configure_logging = lambda config: None  # keep the /dev/null handler
    run(settings)


@contextlib.contextmanager
def gateway(mode: str, workdir: Path, redis_prefix: str) -> Iterator[str]:
    path = workdir / f"interceptors-{mode}.json"
    path.write_bytes(orjson.dumps(config(mode, redis_prefix)))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def end_to_end(modes: list[str], n: int, workdir: Path, redis_prefix: str):
    """p50/p99 µs per row: every gateway up at once, requests interleaved across them."""
    metadata = (("authorization", f"Bearer {KEY}"),)
    request = build_query_request("hello there", model="fast")
    times: dict[str, dict[str, list[float]]] = {m: {"query": [], "status": []} for m in modes}
    with contextlib.ExitStack() as stack:
        stubs = {}
        for mode in modes:
            target = stack.enter_context(gateway(mode, workdir, redis_prefix))
            channel = stack.enter_context(grpc.insecure_channel(target))
            stubs[mode] = llmproxy_pb2_grpc.LLMProxyStub(channel)
        for i in range(n + min(200, n)):  # the first 200 warm up
            for mode, stub in stubs.items():
                for name in ("query", "status"):
                    t0 = time.perf_counter()
                    if name == "query":
                        list(stub.Query(request, metadata=metadata, timeout=10))
                    else:
                        stub.Status(pb.StatusRequest(), metadata=metadata, timeout=10)
                    if i >= min(200, n):
                        times[mode][name].append((time.perf_counter() - t0) * 1e6)
    return {
        mode: {
            f"{name}_{q}": percentile(values, level)
            for name, values in rows.items()
            for q, level in (("p50", 0.5), ("p99", 0.99))
        }
        for mode, rows in times.items()
    }


def redis_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 0.5):
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument(
        "--serve", nargs=3, metavar=("MODE", "CONFIG", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], args.serve[1], int(args.serve[2]))
        return
    modes = MODES[:-1] if args.no_redis or not redis_up() else MODES
    prefix = f"llmproxy:bench:{uuid.uuid4().hex[:8]}:"
    n = max(1, args.requests)

    logs_to_devnull()
    install_null_tracing()
    chain = asyncio.run(chain_costs(modes, n, prefix))
    with tempfile.TemporaryDirectory() as tmp:
        e2e = end_to_end(modes, n, Path(tmp), prefix)

    print(
        f"\nInterceptor chain cost, {n} requests per row ({platform.python_version()}, "
        f"{os.cpu_count()} cores, loopback)\n"
    )
    print(
        "| chain | in process: Query stream µs | + vs bare | Status µs | + vs bare |"
        " e2e Query p50/p99 µs | e2e Status p50/p99 µs |"
    )
    print("|---|---|---|---|---|---|---|")
    for m in modes:
        c, e, b = chain[m], e2e[m], chain["bare"]
        print(
            f"| {m} | {c['query']:.1f} | {c['query'] - b['query']:+.1f} | {c['status']:.1f} | "
            f"{c['status'] - b['status']:+.1f} | {e['query_p50']:.0f} / {e['query_p99']:.0f} | "
            f"{e['status_p50']:.0f} / {e['status_p99']:.0f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"interceptors-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_bytes(
        orjson.dumps(
            {"requests": n, "in_process": chain, "end_to_end": e2e}, option=orjson.OPT_INDENT_2
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
