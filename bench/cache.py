"""Benchmarks what the response cache adds to a request: hit latency and the cost of a miss.

Measured in one run, loopback only, each with a fixed count:

  1. end to end over gRPC: gateway subprocesses serving the zero-delay mock
     provider (one-word answers, so a live answer and a replayed one have the same
     shape: start, one delta, done), called one request at a time by a blocking
     client in this process. Rows: the gateway's floor (cache switched off), a
     memory hit, a Redis hit (memory tier of 0 bytes, so every hit reads Redis at
     127.0.0.1:6379), a miss (a new prompt each time: lookup, coalescer, store),
     the same new prompts with the cache off, and a request that is not cacheable
     (temperature 1: passed through, marked BYPASS). p50/p99 in µs.
  2. in process, the cache stage alone, on a synthetic stream (Started, 20 deltas,
     Completed): the stream bare, then through `ResponseCache.stream` on a hit,
     on a miss with and without coalescing, and not cacheable. p50/p99 in µs.

Prints a Markdown table and writes JSON to bench/results/.

    .venv/bin/python bench/cache.py [--requests 2000] [--no-redis]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson
import redis

from llmproxy.client.client import build_query_request
from llmproxy.server.config.caching import CacheConfig
from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.core.caching.wiring import build_cache
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import (
    CacheStatus,
    Completed,
    FinishReason,
    Message,
    Parameters,
    QueryEvent,
    QueryInput,
    Role,
    Started,
    TextDelta,
    Usage,
)
from llmproxy.v1 import llmproxy_pb2 as pb
from llmproxy.v1 import llmproxy_pb2_grpc

REDIS_URL = "redis://127.0.0.1:6379/0"
RESULTS = Path(__file__).parent / "results"
STATUS = {v: k.removeprefix("CACHE_STATUS_") for k, v in pb.CacheStatus.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(times: list[float], base: list[float] | None = None) -> dict[str, float]:
    row = {"p50_us": percentile(times, 0.5) * 1e6, "p99_us": percentile(times, 0.99) * 1e6}
    if base is not None:
        row["added_p50_us"] = row["p50_us"] - percentile(base, 0.5) * 1e6
        row["added_p99_us"] = row["p99_us"] - percentile(base, 0.99) * 1e6
    return row


# --- 1. End to end ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gateway(cache: dict, workdir: Path) -> Iterator[str]:
    """A gateway subprocess with the zero-delay mock provider; yields its gRPC target."""
    config = {
        "server": {"host": "127.0.0.1"},
        "providers": [{"name": "mock", "type": "mock", "options": {"ttft_ms": 0, "max_words": 1}}],
        "models": [{"name": "mock", "provider": "mock"}],
        "ledger": {"backend": "none"},
        "logging": {"level": "WARNING"},
        "cache": cache,
    }
    path = workdir / f"cache-{uuid.uuid4().hex[:6]}.json"  # JSON is YAML
    path.write_bytes(orjson.dumps(config))
    port = free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "llmproxy.client.cli", "serve", "--config", str(path)),
            *("--grpc-port", str(port), "--http-port", "-1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        yield target
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Case:
    """One row: requests to one gateway, each checked for the cache status it should get."""

    target: str
    make: Callable[[int], pb.QueryRequest]
    expect: str
    times: list[float] = field(default_factory=list)
    matched: int = 0


def run_once(stub: llmproxy_pb2_grpc.LLMProxyStub, case: Case, i: int) -> None:
    request = case.make(i)
    t0 = time.perf_counter()
    done = None
    for response in stub.Query(request, timeout=10):
        if response.WhichOneof("event") == "done":
            done = response.done
    case.times.append(time.perf_counter() - t0)
    if done is not None and STATUS[done.cache_status] == case.expect:
        case.matched += 1


def query(prompt: str, temperature: float = 0.0) -> pb.QueryRequest:
    return build_query_request(prompt, model="mock", temperature=temperature)


def end_to_end(n: int, use_redis: bool) -> dict[str, dict[str, float]]:
    """All gateways run at once and the cases take turns, request by request, so that
    whatever else the machine is doing lands on every row alike."""
    fixed = query("What is the capital of France?")
    prefix = f"llmproxy-bench:{uuid.uuid4().hex[:8]}:"
    configs = {
        "off": {"exact": {"enabled": False}, "coalesce": False},
        "memory": {},
    }
    if use_redis:
        configs["redis"] = {
            "exact": {
                "backend": "redis",
                "redis_url": REDIS_URL,
                "key_prefix": prefix,
                "max_bytes": 0,
            }
        }
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        targets = {name: stack.enter_context(gateway(c, Path(tmp))) for name, c in configs.items()}
        cases = {
            "floor: cache off, same prompt": Case(targets["off"], lambda i: fixed, "MISS"),
            "memory hit": Case(targets["memory"], lambda i: fixed, "HIT"),
            "cache off, new prompts": Case(targets["off"], lambda i: query(f"off {i}"), "MISS"),
            "miss (new prompts)": Case(targets["memory"], lambda i: query(f"new {i}"), "MISS"),
            "not cacheable (temperature 1)": Case(
                targets["memory"], lambda i: query(f"hot {i}", 1.0), "BYPASS"
            ),
        }
        if use_redis:
            cases["redis hit (memory tier 0 B)"] = Case(targets["redis"], lambda i: fixed, "HIT")
        channels = {t: stack.enter_context(grpc.insecure_channel(t)) for t in targets.values()}
        stubs = {t: llmproxy_pb2_grpc.LLMProxyStub(ch) for t, ch in channels.items()}
        try:
            for case in cases.values():  # warm up; also stores the answer the hit rows replay
                for i in range(100):
                    run_once(stubs[case.target], case, -1 - i)
                case.times.clear()
                case.matched = 0
            order = list(cases.values())
            for i in range(n):
                random.shuffle(order)
                for case in order:
                    run_once(stubs[case.target], case, i)
        finally:
            if use_redis:
                client = redis.Redis.from_url(REDIS_URL)
                for key in client.scan_iter(match=prefix + "*"):
                    client.delete(key)
                client.close()
    floor = cases["floor: cache off, same prompt"].times
    off_fresh = cases["cache off, new prompts"].times
    out: dict[str, dict[str, float]] = {}
    for name, case in cases.items():
        base = None if name.startswith(("floor", "cache off")) else floor
        if name.startswith(("miss", "not cacheable")):
            base = off_fresh
        out[name] = {**summary(case.times, base), "expected_status_seen": case.matched}
    return out


# --- 2. In process ----------------------------------------------------------------


class _Provider:
    name = "p"


DEPLOYMENTS = [Deployment(ModelConfig(name="bench", provider="p"), _Provider())]  # type: ignore[arg-type]
WORDS = [TextDelta(f" w{i}") for i in range(20)]


async def events() -> AsyncIterator[QueryEvent]:
    yield Started("bench", "p")
    for delta in WORDS:
        yield delta
    yield Completed("bench", "p", Usage(20, 20), FinishReason.STOP, "stop", 1, 1, 1)


def stage_query(prompt: str, temperature: float | None = 0.0) -> QueryInput:
    return QueryInput(
        (Message(Role.SYSTEM, "Be brief."), Message(Role.USER, prompt)),
        model="bench",
        params=Parameters(temperature=temperature, max_tokens=64),
    )


async def per_request(stage, queries: list[QueryInput]) -> tuple[list[float], int]:
    times: list[float] = []
    hits = 0
    for q in queries:
        t0 = time.perf_counter()
        stream = events() if stage is None else stage.stream(q, DEPLOYMENTS, events)
        last = None
        async for event in stream:
            last = event
        times.append(time.perf_counter() - t0)
        hits += type(last) is Completed and last.cache_status is CacheStatus.HIT
    return times, hits


async def in_process(n: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    same = [stage_query("What is the capital of France?")] * n
    await per_request(None, same[:500])
    base, _ = await per_request(None, same)
    out["bare stream (22 events)"] = summary(base)
    for coalesce in (False, True):
        stage = build_cache(CacheConfig(coalesce=coalesce))
        await per_request(stage, [stage_query(f"warm {i}") for i in range(500)])
        misses, _ = await per_request(stage, [stage_query(f"q{coalesce} {i}") for i in range(n)])
        label = "coalescing on" if coalesce else "coalescing off"
        out[f"stage, miss + store ({label})"] = summary(misses, base)
        hits, count = await per_request(stage, same)
        out[f"stage, hit ({label})"] = {**summary(hits, base), "hits": count}
    stage = build_cache(CacheConfig())
    hot = [stage_query(f"hot {i}", temperature=None) for i in range(n)]
    out["stage, not cacheable (pass-through)"] = summary((await per_request(stage, hot))[0], base)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    n = max(100, min(args.requests, 50_000))
    started = time.time()
    stage = asyncio.run(in_process(n * 5))
    e2e = end_to_end(n, not args.no_redis)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "requests": n,
        "end_to_end_grpc": e2e,
        "in_process_stage": stage,
        "seconds": round(time.time() - started, 1),
    }
    for title, rows in (("End to end over gRPC", e2e), ("Cache stage in process", stage)):
        print(f"\n### {title}\n")
        print("| case | p50 µs | p99 µs | added p50 µs | added p99 µs |")
        print("|---|---:|---:|---:|---:|")
        for name, row in rows.items():
            added = [row.get("added_p50_us"), row.get("added_p99_us")]
            cells = ["" if v is None else f"{v:.1f}" for v in added]
            print(f"| {name} | {row['p50_us']:.1f} | {row['p99_us']:.1f} | {' | '.join(cells)} |")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(f"\nwritten to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
