"""Benchmarks the routing layer: its overhead per request, and failover when a deployment dies.

1. Routing overhead (in process, no network): Router.plan for every strategy
   (name lookup, strategy choice, open-circuit filter), and plan + executor for
   a whole request against an instant in-process provider (what the routing
   layer adds around one upstream call), plain and with hedging enabled.
2. Failover under load (loopback): the gateway (in this process) serves a
   priority group [primary, secondary]; each upstream is its own process
   streaming 20 chunks `--gap-ms` apart (this file's `--paced-upstream` mode),
   so some streams are mid-flight when the primary is SIGKILLed partway through
   a fixed-time load from concurrent gRPC clients. Reports failed requests
   (a stream that already sent tokens is never retried, by design), the time
   from the kill to the first answer from the secondary and to the primary's
   circuit opening, and the latency of requests that fell back.

Bounded in time and requests; stops by itself.

    .venv/bin/python bench/routing.py [--seconds 3] [--concurrency 16] [--gap-ms 2]
                                      [--overhead-only]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
from aiohttp import web
from proxy_procs import Proc, spawn, wait_for_line

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.client import build_query_request
from llmproxy.server.app import build_app
from llmproxy.server.config import Settings
from llmproxy.server.core.catalog import Catalog, build_deployments
from llmproxy.server.core.executor import Executor
from llmproxy.server.core.router import Router
from llmproxy.server.domain import (
    CallContext,
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    ProviderEvent,
    QueryInput,
    Role,
    TextDelta,
    Usage,
)
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.keys import KeyPool

STRATEGY_MEMBERS = 3


class InstantProvider(Provider):
    """Answers at once from memory: whatever the executor measures is the gateway's own work."""

    uses_http = False

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        yield TextDelta("hello")
        yield Finish(FinishReason.STOP, "stop", Usage(5, 1))


def overhead_settings() -> Settings:
    models = [
        {
            "name": f"m{i}",
            "provider": "instant",
            "price": {"input_per_mtok": 1 + i, "output_per_mtok": 2 + i},
        }
        for i in range(STRATEGY_MEMBERS)
    ]
    members = [{"model": f"m{i}", "weight": i + 1} for i in range(STRATEGY_MEMBERS)]
    groups = [
        {"name": strategy, "strategy": strategy, "members": members}
        for strategy in (
            "priority",
            "weighted",
            "round_robin",
            "least_latency",
            "lowest_cost",
            "least_busy",
        )
    ]
    split = [
        {"model": "m0", "percent": 50},
        {"model": "m1", "percent": 30},
        {"model": "m2", "percent": 20},
    ]
    groups.append({"name": "ab_split", "strategy": "ab_split", "members": split})
    groups.append(
        {
            "name": "hedged",
            "members": members[:2],
            "hedge": {"enabled": True, "after_ms": 1000},
        }
    )
    groups.append({"name": "with_fallback", "members": members[:1], "fallback": ["weighted"]})
    return Settings(
        providers=[{"name": "instant", "type": "mock"}],
        models=models,
        groups=groups,
        routing={"auto": {"default": ["weighted", "m2"]}},
    )


def build_catalog() -> Catalog:
    settings = overhead_settings()
    provider = InstantProvider(ProviderSettings(name="instant", type="instant"), None, KeyPool([]))
    deployments = build_deployments(settings.models, {"instant": provider}, settings.resilience)
    for d in deployments:  # least_latency has numbers to compare
        d.stats.record_success(100 + random.random(), 20 + random.random())
    return Catalog(
        deployments, settings.groups, settings.routing, settings.resilience, rng=random.Random(1)
    )


def time_plan(router: Router, model: str, n: int) -> float:
    """Mean microseconds per Router.plan call over n calls (best of 3 batches)."""
    query = QueryInput((Message(Role.USER, "hi"),), model=model)
    ctx = CallContext(route_key="user-42")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            router.plan(query, ctx)
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
    return best


async def time_request(router: Router, executor: Executor, model: str, n: int) -> float:
    """Mean microseconds for plan + executor over a whole instant request (best of 3)."""
    query = QueryInput((Message(Role.USER, "hi"),), model=model)
    ctx = CallContext()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            async for _event in executor.stream(router.plan(query, ctx), query, ctx):
                pass
        best = min(best, (time.perf_counter_ns() - t0) / n / 1000)
    return best


async def bench_overhead(n: int) -> dict[str, float]:
    router = Router(build_catalog())
    results = {}
    names = [*(g for g in router.catalog.groups if g != "hedged"), "m0", "auto"]
    for name in names:
        results[f"plan {name}"] = time_plan(router, name, n)
    executor = Executor()
    results["plan + executor, model m0"] = await time_request(router, executor, "m0", n // 10)
    results["plan + executor, weighted group"] = await time_request(
        router, executor, "weighted", n // 10
    )
    results["plan + executor, hedged group (no hedge fires)"] = await time_request(
        router, executor, "hedged", n // 10
    )
    return results


# --- failover ------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    ended: float = 0.0
    first_token: float = 0.0
    model: str = ""
    code: str = "OK"
    attempts: int = 0


@dataclass
class Failover:
    outcomes: list[Outcome] = field(default_factory=list)
    killed_at: float = 0.0
    circuit_open_at: float | None = None


def failover_settings(primary: int, secondary: int) -> Settings:
    def provider(name: str, port: int) -> dict:
        return {
            "name": name,
            "type": "openai_compatible",
            "base_url": f"http://127.0.0.1:{port}/v1",
            "api_keys": ["sk-bench"],
            "http": {"connect_timeout_s": 1, "read_timeout_s": 5},
        }

    return Settings(
        server={"host": "127.0.0.1", "grpc_port": 0, "http_port": -1, "grace_period_s": 1},
        ledger={"backend": "none"},
        logging={"level": "WARNING"},
        providers=[provider("primary", primary), provider("secondary", secondary)],
        models=[
            {"name": "primary", "provider": "primary", "upstream_model": "bench-model"},
            {"name": "secondary", "provider": "secondary", "upstream_model": "bench-model"},
        ],
        groups=[{"name": "g", "members": [{"model": "primary"}, {"model": "secondary"}]}],
        resilience={
            "retries": {"max_attempts": 2, "backoff_initial_ms": 5, "backoff_max_ms": 20},
            "circuit_breaker": {"consecutive_failures": 5, "cooldown_s": 30},
        },
    )


async def serve_paced(gap_s: float, chunks: int = 20) -> None:
    """A Chat Completions upstream that streams `chunks` tokens `gap_s` apart (own process)."""

    def frame(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(frame({"role": "assistant", "content": ""}))
        for i in range(chunks):
            await asyncio.sleep(gap_s)
            await response.write(frame({"content": f" tok{i}"}))
        await response.write(frame({}, "stop") + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def start_paced(name: str, gap_ms: float, log_dir: Path) -> Proc:
    argv = [sys.executable, __file__, "--paced-upstream", "--gap-ms", str(gap_ms)]
    proc = spawn(name, argv, log_dir / f"{name}.log")
    proc.port = int(wait_for_line(proc, lambda s: s.startswith("READY "), timeout=15).split()[1])
    return proc


async def bench_failover(
    seconds: float, concurrency: int, kill_after: float, gap_ms: float
) -> Failover:
    result = Failover()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        primary = start_paced("primary", gap_ms, log_dir)
        secondary = start_paced("secondary", gap_ms, log_dir)
        app = build_app(failover_settings(primary.port, secondary.port))
        await app.start()
        client = AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}")
        breaker = app.catalog.deployments["primary"].breaker
        end = time.perf_counter() + seconds
        request = build_query_request("hi", model="g")
        try:

            async def worker() -> None:
                while time.perf_counter() < end:
                    outcome = Outcome(time.perf_counter())
                    try:
                        async for event in client.stream(request, timeout=5):
                            kind = event.WhichOneof("event")
                            if kind == "start":
                                outcome.first_token = time.perf_counter()
                                outcome.model = event.start.model
                            elif kind == "done":
                                outcome.attempts = len(event.done.attempts)
                    except grpc.aio.AioRpcError as error:
                        outcome.code = error.code().name
                    outcome.ended = time.perf_counter()
                    result.outcomes.append(outcome)

            async def killer() -> None:
                await asyncio.sleep(kill_after)
                primary.popen.send_signal(signal.SIGKILL)
                result.killed_at = time.perf_counter()
                while time.perf_counter() < end and result.circuit_open_at is None:
                    if breaker.state.value == "open":
                        result.circuit_open_at = time.perf_counter()
                    await asyncio.sleep(0.0005)

            await asyncio.gather(killer(), *(worker() for _ in range(concurrency)))
        finally:
            await client.close()
            await app.stop(grace=1)
            primary.stop()
            secondary.stop()
    return result


def report_failover(r: Failover, seconds: float, concurrency: int) -> list[str]:
    before = [o for o in r.outcomes if o.ended < r.killed_at]
    after = [o for o in r.outcomes if o.started >= r.killed_at]
    spanning = [o for o in r.outcomes if o.started < r.killed_at <= o.ended]
    codes = Counter(o.code for o in r.outcomes)
    failed = [o for o in r.outcomes if o.code != "OK"]
    first_secondary = min(
        (o.first_token for o in r.outcomes if o.model == "secondary" and o.code == "OK"),
        default=None,
    )
    fell_back = [o for o in r.outcomes if o.attempts > 1 and o.model == "secondary"]

    def ms(values: list[float], q: float) -> str:
        if not values:
            return "-"
        ordered = sorted(values)
        return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"

    def lat(outcomes: list[Outcome]) -> list[float]:
        return [o.ended - o.started for o in outcomes]

    first = min(o.started for o in r.outcomes)
    lines = [
        f"failover: {len(r.outcomes)} requests, {concurrency} concurrent, {seconds:.1f} s, "
        f"primary SIGKILLed at {r.killed_at - first:.2f} s",
        f"  outcomes: {dict(codes)}",
        f"  failed requests: {len(failed)} of {len(spanning)} in flight at the kill; "
        f"{sum(1 for o in failed if o.first_token)} of them had already streamed tokens "
        "(never retried, by design)",
        "  kill -> first token from the secondary: "
        + (f"{(first_secondary - r.killed_at) * 1000:.2f} ms" if first_secondary else "-"),
        "  kill -> primary circuit open: "
        + (f"{(r.circuit_open_at - r.killed_at) * 1000:.2f} ms" if r.circuit_open_at else "-"),
        f"  requests that tried the dead primary then fell back: {len(fell_back)}, "
        f"latency p50 {ms(lat(fell_back), 0.5)} ms, max {ms(lat(fell_back), 1.0)} ms",
        f"  latency before kill p50 {ms(lat(before), 0.5)} / p99 {ms(lat(before), 0.99)} ms; "
        f"after p50 {ms(lat(after), 0.5)} / p99 {ms(lat(after), 0.99)} ms",
        f"  throughput before {len(before) / max(r.killed_at - first, 1e-9):.0f}/s, "
        f"after {len(after) / max(max(o.ended for o in r.outcomes) - r.killed_at, 1e-9):.0f}/s",
    ]
    return lines


async def main_async(args: argparse.Namespace) -> None:
    overhead = await bench_overhead(args.iterations)
    print("routing overhead per request (microseconds, best of 3 batches):")
    width = max(map(len, overhead))
    for name, us in overhead.items():
        print(f"  {name:<{width}}  {us:7.2f} us")
    if not args.overhead_only:
        result = await bench_failover(args.seconds, args.concurrency, args.seconds / 3, args.gap_ms)
        print("\n".join(report_failover(result, args.seconds, args.concurrency)))
        if result.outcomes:
            print(
                "  mean attempts per request: "
                f"{statistics.fmean(o.attempts for o in result.outcomes if o.attempts):.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--gap-ms", type=float, default=2.0, help="upstream gap between tokens")
    parser.add_argument("--overhead-only", action="store_true")
    parser.add_argument("--paced-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        run = asyncio.run
    else:
        run = uvloop.run
    if args.paced_upstream:
        run(serve_paced(args.gap_ms / 1000))
    else:
        run(main_async(args))


if __name__ == "__main__":
    main()
