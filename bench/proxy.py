"""Benchmarks the gateway's Query path against calling a zero-latency fake upstream directly.

One run starts the fake upstream (bench/fake_upstream.py) and the gateway
(`llmproxy serve --config <generated yaml>`, uvloop) as their own processes on
loopback, then measures in the same run:

  1. added latency at 1 stream: h2load stream completion time, gRPC through the
     gateway vs HTTP/1.1 straight to the upstream (p50, p99);
  2. throughput at 1, 16 and 64 concurrent streams, both ways (h2load);
  3. time to first token, both ways (Python probes, one stream at a time);
  4. the gateway's RSS at idle, its peak under 64 streams, and after the load,
     plus its CPU time per stream.

Every load is a fixed number of streams with a time limit. Prints a Markdown
table and writes JSON to bench/results/.

    .venv/bin/python bench/proxy.py [--quick] [--workers N] [--baseline <earlier>.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
from fake_upstream import MODEL, expected_text
from proxy_h2load import GRPC_HEADERS, QUERY_PATH, LoadResult, grpc_frame, percentile, run_h2load
from proxy_probes import ProbeResult, probe_direct, probe_gateway
from proxy_procs import (
    BENCH_DIR,
    ResourceSampler,
    rss_kb,
    start_gateway,
    start_upstream,
    upstream_streams,
)
from proxy_report import render_markdown

import llmproxy.server
from llmproxy.server.domain import ChatRequest, Message, Role
from llmproxy.server.providers.openai_compat import build_body
from llmproxy.v1 import llmproxy_pb2 as pb

PROMPT = "Write one short sentence about benchmarks."
CONCURRENCY = (1, 16, 64)
# Streams per level (gateway and direct alike), warm-up streams, and one-at-a-time probes.
PLANS = {
    "full": {"streams": {1: 3000, 16: 10000, 64: 15000}, "warmup": 2000, "probes": 1000},
    "quick": {"streams": {1: 500, 16: 2000, 64: 3000}, "warmup": 500, "probes": 200},
}
LOAD_TIMEOUT_S = 120
SAMPLE_STREAMS = 20


class BenchError(Exception):
    """A check failed: the numbers would not mean what they claim."""


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.plan = PLANS["quick" if args.quick else "full"]
        self.workdir = workdir
        self.text = expected_text(args.chunks)
        self.request = pb.QueryRequest(query=PROMPT, model="bench")
        self.grpc_body = workdir / "query.grpc"
        self.grpc_body.write_bytes(grpc_frame(self.request.SerializeToString()))
        chat = ChatRequest(model=MODEL, messages=(Message(Role.USER, PROMPT),))
        self.http_body = orjson.dumps(build_body(chat))
        self.http_body_file = workdir / "query.json"
        self.http_body_file.write_bytes(self.http_body)

    def load(self, url: str, concurrency: int, requests: int, *, h1: bool, tag: str) -> LoadResult:
        headers = (
            ("content-type: application/json", "authorization: Bearer sk-bench-not-a-secret")
            if h1
            else GRPC_HEADERS
        )
        return run_h2load(
            url,
            body_file=self.http_body_file if h1 else self.grpc_body,
            headers=headers,
            requests=requests,
            concurrency=concurrency,
            streams_per_connection=self.args.streams_per_connection,
            h1=h1,
            log_file=self.workdir / f"h2load-{tag}-c{concurrency}.log",
            timeout_s=LOAD_TIMEOUT_S,
        )

    def check_sample(self, target: str, count: int) -> ProbeResult:
        sample = probe_gateway(target, self.request, self.text, count)
        if sample.ok != count or sample.wrong_text:
            raise BenchError(
                f"gateway sample failed: {dict(sample.statuses)}, wrong text {sample.wrong_text}"
            )
        return sample

    def check_load(self, result: LoadResult, min_bytes: float, upstream_served: int) -> dict:
        """h2load only sees HTTP 200; a failed gRPC stream is a 200 with no messages.

        The upstream's own count proves each stream was relayed (no cache, no retry).
        """
        complete = result.succeeded == result.requests and not (result.failed or result.errored)
        whole = result.bytes_per_stream >= min_bytes
        relayed = upstream_served == result.succeeded
        if not (complete and whole and relayed):
            raise BenchError(
                f"load against {result.target} at c={result.concurrency}: "
                f"{result.succeeded}/{result.requests} succeeded, "
                f"{result.bytes_per_stream:.0f} bytes per stream "
                f"(a whole answer: >= {min_bytes:.0f}), {upstream_served} reached the upstream"
            )
        return {"all_succeeded": complete, "bytes_per_stream_ok": whole, "all_relayed": relayed}

    def run(self, upstream_port: int, gateway_pid: int, gateway_port: int) -> dict:
        target = f"127.0.0.1:{gateway_port}"
        gw_url = f"http://{target}{QUERY_PATH}"
        up_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        sample = self.check_sample(target, SAMPLE_STREAMS)
        min_bytes = min_stream_bytes(sample, self.text)
        idle_rss = rss_kb(gateway_pid)
        self.load(up_url, 64, self.plan["warmup"], h1=True, tag="warmup-direct")
        self.load(gw_url, 64, self.plan["warmup"], h1=False, tag="warmup-gateway")

        loads: dict[str, dict] = {}
        peak_rss = 0
        for c in CONCURRENCY:
            n = self.plan["streams"][c]
            direct = self.load(up_url, c, n, h1=True, tag="direct")
            served = upstream_streams(upstream_port)
            with ResourceSampler(gateway_pid) as sampler:
                gateway = self.load(gw_url, c, n, h1=False, tag="gateway")
            served = upstream_streams(upstream_port) - served
            checks = self.check_load(gateway, min_bytes, served)
            self.check_sample(target, 5)
            if c == 64:
                peak_rss = sampler.usage.peak_rss_kb
            loads[str(c)] = {
                "direct": direct.summary(),
                "gateway": gateway.summary(),
                "gateway_messages_per_stream": messages_per_stream(gateway, min_bytes),
                "gateway_cpu_ms_per_stream": round(sampler.usage.cpu_s * 1000 / n, 3),
                "gateway_peak_rss_kb": sampler.usage.peak_rss_kb,
                "checks": checks,
            }
            print(
                f"c={c:>2}: direct {direct.streams_per_s:8.0f}/s   "
                f"gateway {gateway.streams_per_s:6.0f}/s",
                file=sys.stderr,
            )

        probes = self.plan["probes"]
        direct_probe = probe_direct(upstream_port, self.http_body, probes)
        gateway_probe = self.check_sample(target, probes)
        return {
            "loads": loads,
            "ttft": {
                "direct": ms_stats(direct_probe.ttft_us),
                "gateway": ms_stats(gateway_probe.ttft_us),
            },
            "probe_stream_time": {
                "direct": ms_stats(direct_probe.total_us),
                "gateway": ms_stats(gateway_probe.total_us),
            },
            "probe_messages_per_stream": round(
                sum(gateway_probe.messages) / max(len(gateway_probe.messages), 1), 2
            ),
            "server_proxy_overhead_ms": {
                "p50": percentile(gateway_probe.proxy_overhead_us, 0.5) / 1000,
                "p99": percentile(gateway_probe.proxy_overhead_us, 0.99) / 1000,
            },
            "memory_kb": {
                "idle": idle_rss,
                "peak_c64": peak_rss,
                "after_load": rss_kb(gateway_pid),
            },
            "min_bytes_per_stream": min_bytes,
        }


def min_stream_bytes(sample: ProbeResult, text: str) -> float:
    """gRPC payload bytes of a whole stream with every delta coalesced into one message.

    Each message costs its size plus the 5-byte gRPC prefix; two bytes of
    slack cover varint widths of the timings in the done event.
    """
    rid = "0" * 32
    one_delta = pb.QueryResponse(request_id=rid, delta=pb.TextDelta(text=text)).ByteSize() + 5
    start, done = sample.message_sizes[0], sample.message_sizes[-1]
    return start + done + 10 + one_delta - 2


def messages_per_stream(result: LoadResult, min_bytes: float) -> float:
    """gRPC messages per stream under load, from bytes: start, done, and the deltas.

    Every delta past the first costs its framing but no new text, so the bytes
    above a fully coalesced stream count the extra deltas.
    """
    rid = "0" * 32
    extra = pb.QueryResponse(request_id=rid, delta=pb.TextDelta(text="x")).ByteSize() + 5 - 1
    return round(3 + max(result.bytes_per_stream - min_bytes, 0) / extra, 2)


def ms_stats(values_us: list[float]) -> dict:
    return {
        "count": len(values_us),
        "p50_ms": round(percentile(values_us, 0.5) / 1000, 3),
        "p99_ms": round(percentile(values_us, 0.99) / 1000, 3),
    }


def git_commit() -> str:
    """The commit of the server code under test (not of this script), `+dirty` if edited."""
    here = Path(llmproxy.server.__file__).resolve().parent

    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=here)
        return out.stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams (about 30 s)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per answer")
    parser.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        help="time between the upstream's chunks, so each is a gRPC message of its own "
        "(a full run then takes minutes: use --quick)",
    )
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=16,
        help="gRPC streams multiplexed per h2load connection (64 streams: 4 connections)",
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument(
        "--workers", type=int, default=1, help="passed to `llmproxy serve --workers` (fixed ports)"
    )
    parser.add_argument("--baseline", type=Path, help="an earlier JSON result to compare with")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep process and h2load logs of a good run"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"proxy-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    upstream = start_upstream(args.chunks, workdir, args.interval_ms)
    try:
        gateway = start_gateway(upstream.port, workdir, args.workers)
        try:
            measured = Bench(args, workdir).run(upstream.port, gateway.pid, gateway.port)
        finally:
            gateway.stop()
    except BenchError as error:
        print(f"benchmark invalid: {error}\nlogs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        upstream.stop()
    report = {
        "meta": {
            "label": args.label,
            "mode": "quick" if args.quick else "full",
            "commit": git_commit(),
            "time": stamp,
            "chunks": args.chunks,
            "interval_ms": args.interval_ms,
            "workers": args.workers,
            "streams_per_connection": args.streams_per_connection,
            "python": platform.python_version(),
            "cpus": len(os.sched_getaffinity(0)),
            "seconds": round(time.monotonic() - started, 1),
            # Other work on the machine skews every figure; this says how busy it was.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "server_code": str(Path(llmproxy.server.__file__).parent),
        },
        **measured,
    }
    path = args.out / f"proxy-{stamp}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    baseline = orjson.loads(args.baseline.read_bytes()) if args.baseline else None
    print(render_markdown(report, baseline))
    print(f"\nJSON: {path}", file=sys.stderr)
    if args.keep_logs:
        print(f"logs: {workdir}", file=sys.stderr)
    else:
        # Per-request logs, the access log and the ledger run to ~20 MB per run.
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
