"""Starts the fake upstream and the gateway as their own processes, and reads their RSS and CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

BENCH_DIR = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Proc:
    """A child process whose output goes to a log file, stopped with SIGTERM."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int = 0

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def spawn(name: str, argv: list[str], log_path: Path) -> Proc:
    """Runs in the log's directory, so files a process writes (the usage ledger) land there."""
    log = log_path.open("wb")
    popen = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=log_path.parent,
    )
    log.close()
    return Proc(name, popen, log_path)


def wait_for_line(proc: Proc, match, timeout: float) -> str:
    """The first line of the process's log for which `match(line)` is truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if match(line):
                return line
        if proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    tail = proc.log_path.read_text(errors="replace")[-2000:]
    proc.stop()
    raise RuntimeError(f"{proc.name} did not start within {timeout:.0f}s; log tail:\n{tail}")


def start_upstream(chunks: int, log_dir: Path, interval_ms: float = 0.0) -> Proc:
    argv = [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--chunks", str(chunks)]
    argv += ["--interval-ms", str(interval_ms)]
    proc = spawn("fake upstream", argv, log_dir / "fake_upstream.log")
    line = wait_for_line(proc, lambda s: s.startswith("READY "), timeout=15)
    proc.port = int(line.split()[1])
    return proc


def upstream_streams(port: int) -> int:
    """How many answers the fake upstream has streamed since it started."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return int(orjson.loads(response.read())["streams"])


def gateway_config(upstream_port: int, grpc_port: int = 0, http_port: int = 0) -> str:
    """The YAML the gateway runs on: one OpenAI-compatible provider, one model, free ports."""
    return (
        f"server: {{host: 127.0.0.1, grpc_port: {grpc_port}, http_port: {http_port}, "
        "grace_period_s: 2}\n"
        "providers:\n"
        "  - name: fake\n"
        "    type: openai_compatible\n"
        f'    base_url: "http://127.0.0.1:{upstream_port}/v1"\n'
        '    api_keys: ["sk-bench-not-a-secret"]\n'
        "models:\n"
        "  - {name: bench, provider: fake, upstream_model: bench-model}\n"
    )


def llmproxy_command() -> list[str]:
    script = Path(sys.executable).parent / "llmproxy"
    if script.exists():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from llmproxy.client.cli import main; sys.exit(main())",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gateway(upstream_port: int, log_dir: Path, workers: int = 1) -> Proc:
    """`llmproxy serve --config <yaml>`, as users run it (uvloop); the port is read from its log.

    Several workers share fixed ports, and are ready when their supervisor says so.
    """
    config = log_dir / "gateway.yaml"
    ports = (free_port(), free_port()) if workers > 1 else (0, 0)
    config.write_text(gateway_config(upstream_port, *ports))
    argv = [*llmproxy_command(), "serve", "--config", str(config), "--workers", str(workers)]
    proc = spawn("gateway", argv, log_dir / "gateway.log")
    ready = '"all workers serving"' if workers > 1 else '"listening"'

    def listening(line: str) -> bool:
        return ready in line and '"grpc_port"' in line

    proc.port = int(orjson.loads(wait_for_line(proc, listening, timeout=90))["grpc_port"])
    return proc


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (a supervisor's workers); those gone are skipped."""
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


def rss_kb(pid: int) -> int:
    """RSS of the process and its descendants, summed."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/statm").read_text().split()
        except OSError:
            continue
        total += int(fields[1]) * PAGE_KB
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of every thread of the process and its descendants so far."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


@dataclass
class Usage:
    cpu_s: float = 0.0
    peak_rss_kb: int = 0
    samples: list[int] = field(default_factory=list)


class ResourceSampler:
    """Samples a process's RSS every `interval` seconds in a thread while a load runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.usage = Usage()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpu0 = 0.0

    def __enter__(self) -> ResourceSampler:
        self._cpu0 = cpu_seconds(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.usage.cpu_s = cpu_seconds(self.pid) - self._cpu0

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_kb(self.pid)
            self.usage.samples.append(rss)
            self.usage.peak_rss_kb = max(self.usage.peak_rss_kb, rss)
            self._stop.wait(self.interval)
