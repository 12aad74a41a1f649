"""Measures a peer gateway (Portkey) under bench/proxy.py's streaming load, in the same run.

The machine's speed varies from day to day, so a peer's figure from another
day says little. This script installs a pinned Portkey AI gateway
(`@portkey-ai/gateway` from npm, into bench/.peers/), starts it and the fake
upstream (bench/fake_upstream.py) on loopback, checks that a streamed answer
arrives whole through it, then drives h2load at 1, 16 and 64 concurrent
streams: the same streaming chat completion, HTTP/1.1, one connection per
stream. Straight to the upstream is measured alongside as the floor. With
`--with-gateway`, llmproxy's own gRPC Query load at 64 streams runs in the same
run, for the ratio our target is stated in (at least twice Portkey).

    .venv/bin/python bench/peers.py [--quick] [--with-gateway [--gateway-workers N]]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
from fake_upstream import expected_text
from proxy import Bench, BenchError, git_commit, min_stream_bytes
from proxy_h2load import QUERY_PATH, LoadResult, run_h2load
from proxy_procs import (
    BENCH_DIR,
    Proc,
    ResourceSampler,
    free_port,
    rss_kb,
    spawn,
    start_gateway,
    start_upstream,
    upstream_streams,
    wait_for_line,
)

PORTKEY_VERSION = "1.15.2"
# The gateway asks for @hono/node-server ^1.3.3. From 1.14.3 on, that server's
# lightweight Response keeps fetch()'s immutable headers, and every proxied chat
# completion fails with "TypeError: immutable" (Portkey-AI/gateway#1389).
# Portkey's own repository builds against 1.13.5.
HONO_NODE_SERVER_VERSION = "1.13.5"
PEERS_DIR = BENCH_DIR / ".peers"
# Portkey's server listens on every interface and has no option for a host;
# this preload binds a listen(port) without a host to loopback.
LOOPBACK_PRELOAD = """\
import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && typeof args[1] !== "string") {
    const callbacks = args.slice(1).filter((a) => typeof a === "function");
    return listen.call(this, args[0], "127.0.0.1", ...callbacks);
  }
  return listen.apply(this, args);
};
"""
CONCURRENCY = (1, 16, 64)
PLANS = {
    "full": {"streams": {1: 2000, 16: 6000, 64: 10000}, "warmup": 2000},
    "quick": {"streams": {1: 500, 16: 2000, 64: 3000}, "warmup": 500},
}
LOAD_TIMEOUT_S = 120
CHAT_PATH = "/v1/chat/completions"
PROTOCOL_NAMES = {"h1": "HTTP/1.1", "h2c": "h2c"}
API_KEY_HEADER = "authorization: Bearer sk-bench-not-a-secret"


def install_portkey(root: Path) -> Path:
    """Installs the pinned gateway into `root` unless it is there already; returns its start script.

    Install scripts are skipped: the package's only one, patch-package, has no
    patches to apply from npm.
    """
    script = root / "node_modules/@portkey-ai/gateway/build/start-server.js"
    manifest = orjson.dumps(
        {
            "private": True,
            "dependencies": {"@portkey-ai/gateway": PORTKEY_VERSION},
            "overrides": {"@hono/node-server": HONO_NODE_SERVER_VERSION},
        },
        option=orjson.OPT_INDENT_2,
    )
    package = root / "package.json"
    if not (script.exists() and package.exists() and package.read_bytes() == manifest):
        npm = shutil.which("npm")
        if npm is None:
            raise BenchError("npm is not installed (Portkey is an npm package)")
        root.mkdir(parents=True, exist_ok=True)
        package.write_bytes(manifest)
        argv = [
            *(npm, "install", "--prefix", str(root)),
            *("--no-audit", "--no-fund", "--ignore-scripts"),
        ]
        print(f"installing @portkey-ai/gateway@{PORTKEY_VERSION} into {root}", file=sys.stderr)
        subprocess.run(argv, check=True, timeout=600, stdout=subprocess.DEVNULL)
    (root / "loopback.mjs").write_text(LOOPBACK_PRELOAD)
    return script


def installed_version(root: Path, package: str) -> str:
    return orjson.loads((root / "node_modules" / package / "package.json").read_bytes())["version"]


def listening_addresses(pid: int, port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) of the process's sockets listening on `port`."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def start_portkey(root: Path, script: Path, log_dir: Path) -> Proc:
    """`node start-server.js --port=N --headless` (no web UI), bound to loopback only."""
    node = shutil.which("node")
    if node is None:
        raise BenchError("node is not installed")
    port = free_port()
    argv = [node, "--import", str(root / "loopback.mjs"), str(script), f"--port={port}"]
    proc = spawn("portkey", [*argv, "--headless"], log_dir / "portkey.log")
    wait_for_line(proc, lambda line: "Ready for connections" in line, timeout=60)
    proc.port = port
    addresses = listening_addresses(proc.pid, port)
    if addresses != {"0100007F"}:
        proc.stop()
        raise BenchError(f"portkey listens on {addresses or 'nothing'}, not only 127.0.0.1")
    return proc


def fetch_answer(port: int, body: bytes, headers: dict[str, str]) -> tuple[bytes, str, list[bytes]]:
    """One streamed chat completion: its body, the content it carries, every SSE `data:` payload."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", CHAT_PATH, body, {"content-type": "application/json", **headers})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise BenchError(f"POST {CHAT_PATH} on port {port}: HTTP {response.status}")
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    text = []
    for event in events:
        if event != b"[DONE]":
            for choice in orjson.loads(event).get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return raw, "".join(text), events


class PeerBench:
    def __init__(self, args: argparse.Namespace, workdir: Path, upstream_port: int) -> None:
        self.args = args
        self.plan = PLANS["quick" if args.quick else "full"]
        self.workdir = workdir
        self.upstream_port = upstream_port
        # proxy.py's Bench builds the request bodies, and drives llmproxy's own load.
        self.gateway_bench = Bench(
            argparse.Namespace(
                quick=args.quick,
                chunks=args.chunks,
                streams_per_connection=args.streams_per_connection,
            ),
            workdir,
        )
        self.body_file = self.gateway_bench.http_body_file
        self.text = expected_text(args.chunks)
        self.peer_headers = {
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
        }

    def load(self, port: int, concurrency: int, requests: int, *, h1: bool, tag: str) -> LoadResult:
        headers = ["content-type: application/json", API_KEY_HEADER]
        if port != self.upstream_port:
            headers += [f"{name}: {value}" for name, value in self.peer_headers.items()]
        return run_h2load(
            f"http://127.0.0.1:{port}{CHAT_PATH}",
            body_file=self.body_file,
            headers=tuple(headers),
            requests=requests,
            concurrency=concurrency,
            streams_per_connection=16,
            h1=h1,
            log_file=self.workdir / f"h2load-{tag}-c{concurrency}.log",
            timeout_s=LOAD_TIMEOUT_S,
        )

    def check_answer(self, port: int) -> dict:
        """The answer through the peer carries the whole text, as straight from the upstream."""
        body = self.gateway_bench.http_body
        auth = {"authorization": API_KEY_HEADER.split(": ", 1)[1]}
        _, direct_text, direct_events = fetch_answer(self.upstream_port, body, auth)
        raw, text, events = fetch_answer(port, body, {**auth, **self.peer_headers})
        if not (text == direct_text == self.text and events[-1:] == [b"[DONE]"]):
            raise BenchError(f"answer through the peer is not whole: {text!r}, {events[-1:]}")
        # h2load counts body bytes after de-chunking, so a whole answer is at least this.
        return {"text_ok": True, "same_events": events == direct_events, "body_bytes": len(raw)}

    def supports_h2c(self, port: int) -> bool:
        """h2 with prior knowledge on the cleartext port: does one stream succeed?"""
        try:
            result = self.load(port, 1, 1, h1=False, tag="h2c-probe")
        except (RuntimeError, subprocess.TimeoutExpired):
            return False
        return result.succeeded == 1

    def measure_peer(self, proc: Proc) -> dict:
        answer = self.check_answer(proc.port)
        idle_rss = rss_kb(proc.pid)
        self.load(proc.port, 64, self.plan["warmup"], h1=True, tag="warmup-portkey")
        protocols = {"h1": True}
        h2c = self.supports_h2c(proc.port)
        if h2c:
            protocols["h2c"] = False
        loads: dict[str, dict] = {}
        for c in CONCURRENCY:
            n = self.plan["streams"][c]
            level = {"direct": self.load(self.upstream_port, c, n, h1=True, tag="direct").summary()}
            for name, h1 in protocols.items():
                served = upstream_streams(self.upstream_port)
                with ResourceSampler(proc.pid) as sampler:
                    result = self.load(proc.port, c, n, h1=h1, tag=f"portkey-{name}")
                served = upstream_streams(self.upstream_port) - served
                level[f"portkey_{name}"] = {
                    **result.summary(),
                    "cpu_ms_per_stream": round(sampler.usage.cpu_s * 1000 / n, 3),
                    "peak_rss_kb": sampler.usage.peak_rss_kb,
                    "checks": check_load(result, answer["body_bytes"], served),
                }
                self.check_answer(proc.port)
                print(
                    f"c={c:>2}: direct {level['direct']['streams_per_s']:8.0f}/s   "
                    f"portkey {name} {result.streams_per_s:6.0f}/s",
                    file=sys.stderr,
                )
            loads[str(c)] = level
        return {
            "answer": answer,
            "h2c_supported": h2c,
            "loads": loads,
            "memory_kb": {"idle": idle_rss, "after_load": rss_kb(proc.pid)},
        }

    def measure_gateway(self) -> dict:
        """llmproxy's gRPC Query load at 64 streams, checked as bench/proxy.py checks it."""
        bench, n = self.gateway_bench, self.plan["streams"][64]
        gateway = start_gateway(self.upstream_port, self.workdir, self.args.gateway_workers)
        try:
            target = f"127.0.0.1:{gateway.port}"
            url = f"http://{target}{QUERY_PATH}"
            min_bytes = min_stream_bytes(bench.check_sample(target, 20), bench.text)
            bench.load(url, 64, self.plan["warmup"], h1=False, tag="warmup-gateway")
            served = upstream_streams(self.upstream_port)
            with ResourceSampler(gateway.pid) as sampler:
                result = bench.load(url, 64, n, h1=False, tag="gateway")
            served = upstream_streams(self.upstream_port) - served
            checks = bench.check_load(result, min_bytes, served)
            bench.check_sample(target, 5)
            print(f"c=64: llmproxy {result.streams_per_s:6.0f}/s", file=sys.stderr)
            return {
                **result.summary(),
                "workers": self.args.gateway_workers,
                "streams_per_connection": self.args.streams_per_connection,
                "cpu_ms_per_stream": round(sampler.usage.cpu_s * 1000 / n, 3),
                "peak_rss_kb": sampler.usage.peak_rss_kb,
                "checks": checks,
            }
        finally:
            gateway.stop()


def check_load(result: LoadResult, answer_bytes: int, upstream_served: int) -> dict:
    """Every stream succeeded, carried a whole answer, and reached the upstream exactly once."""
    complete = result.succeeded == result.requests and not (result.failed or result.errored)
    whole = result.bytes_per_stream >= answer_bytes
    relayed = upstream_served == result.succeeded
    if not (complete and whole and relayed):
        raise BenchError(
            f"load against {result.target} at c={result.concurrency}: "
            f"{result.succeeded}/{result.requests} succeeded, "
            f"{result.bytes_per_stream:.0f} bytes per stream (a whole answer: {answer_bytes}), "
            f"{upstream_served} reached the upstream"
        )
    return {"all_succeeded": complete, "whole_answers": whole, "all_relayed": relayed}


def render_markdown(report: dict) -> str:
    """One column per target: the upstream itself, Portkey per protocol, llmproxy at 64."""
    peer, gateway, meta = report["portkey"], report.get("llmproxy_c64"), report["meta"]
    protocols = ["h1", "h2c"] if peer["h2c_supported"] else ["h1"]
    head = ["Measure", "Direct to upstream"]
    head += [f"Portkey {meta['portkey_version']} ({PROTOCOL_NAMES[p]})" for p in protocols]
    if gateway:
        head.append(
            f"llmproxy (gRPC over h2, workers: {gateway['workers']}, "
            f"{gateway['streams_per_connection']} streams per connection)"
        )
    rows = []
    for c, level in peer["loads"].items():
        cells = [level["direct"], *(level[f"portkey_{p}"] for p in protocols)]
        if gateway:
            cells.append(gateway if c == "64" else None)
        rows.append([f"Throughput, {c} concurrent", *map(_rate, cells)])
        rows.append([f"Stream time, {c} concurrent, p50 / p99", *map(_times, cells)])
        rows.append([f"CPU per stream, {c} concurrent", "", *map(_cpu, cells[1:])])
    memory = peer["memory_kb"]
    peak = peer["loads"]["64"]["portkey_h1"]["peak_rss_kb"]
    mib = "{:.0f} / {:.0f} / {:.0f} MiB".format(
        memory["idle"] / 1024, peak / 1024, memory["after_load"] / 1024
    )
    rows.append(["RSS idle / peak at 64 / after", "", mib])
    if not peer["h2c_supported"]:
        rows.append(["h2c (HTTP/2 without TLS)", "", "not supported"])
    if gateway:
        ratio = gateway["streams_per_s"] / peer["loads"]["64"]["portkey_h1"]["streams_per_s"]
        rows.append(["llmproxy / Portkey, 64 concurrent (target 2)", "", "", f"{ratio:.2f}x"])
    width = len(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join((row + [""] * width)[:width]) + " |" for row in rows]
    before = "/".join(f"{x:.1f}" for x in meta["loadavg_before"])
    after = "/".join(f"{x:.1f}" for x in meta["loadavg_after"])
    lines.append(f"\n{meta['mode']} run, load average {before} before and {after} after.")
    return "\n".join(lines)


def _rate(summary: dict | None) -> str:
    return f"{summary['streams_per_s']:,.0f} /s" if summary else ""


def _times(summary: dict | None) -> str:
    return f"{summary['p50_ms']:.2f} / {summary['p99_ms']:.2f} ms" if summary else ""


def _cpu(summary: dict | None) -> str:
    return f"{summary['cpu_ms_per_stream']:.2f} ms" if summary else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per answer")
    parser.add_argument(
        "--interval-ms", type=float, default=0.0, help="time between the upstream's chunks"
    )
    parser.add_argument(
        "--with-gateway", action="store_true", help="also measure llmproxy at 64 streams"
    )
    parser.add_argument("--gateway-workers", type=int, default=1, help="llmproxy serve --workers")
    parser.add_argument(
        "--streams-per-connection",
        type=int,
        default=16,
        help="llmproxy's gRPC streams per h2load connection (the kernel spreads connections, "
        "not streams, over workers)",
    )
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep process and h2load logs of a good run"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"peers-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    root = PEERS_DIR / f"portkey-{PORTKEY_VERSION}"
    started = time.monotonic()
    load_before = os.getloadavg()
    upstream = start_upstream(args.chunks, workdir, args.interval_ms)
    try:
        script = install_portkey(root)
        bench = PeerBench(args, workdir, upstream.port)
        portkey = start_portkey(root, script, workdir)
        try:
            measured = {"portkey": bench.measure_peer(portkey)}
        finally:
            portkey.stop()
        if args.with_gateway:
            measured["llmproxy_c64"] = bench.measure_gateway()
    except BenchError as error:
        print(f"benchmark invalid: {error}\nlogs kept in {workdir}", file=sys.stderr)
        return 1
    finally:
        upstream.stop()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    report = {
        "meta": {
            "label": args.label,
            "mode": "quick" if args.quick else "full",
            "time": stamp,
            "commit": git_commit(),
            "portkey_version": installed_version(root, "@portkey-ai/gateway"),
            "hono_node_server_version": installed_version(root, "@hono/node-server"),
            "node": node,
            "chunks": args.chunks,
            "interval_ms": args.interval_ms,
            "cpus": len(os.sched_getaffinity(0)),
            "seconds": round(time.monotonic() - started, 1),
            # Other work on the machine skews every figure; this says how busy it was.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        **measured,
    }
    path = args.out / f"peers-{stamp}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(render_markdown(report))
    print(f"\nJSON: {path}", file=sys.stderr)
    if args.keep_logs:
        print(f"logs: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
