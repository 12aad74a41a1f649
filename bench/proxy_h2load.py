"""Drives load with h2load (nghttp2-client): gRPC over h2 to the gateway, HTTP/1.1 to the upstream.

Python gRPC clients saturate long before the server, so the load generator is
C. h2load knows nothing of gRPC trailers: the caller checks grpc-status on a
sample with a real gRPC client, and `bytes_per_stream` here lets it check that
every stream carried a whole answer.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
QUERY_PATH = "/llmproxy.v1.LLMProxy/Query"

_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s),")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_DATA = re.compile(r"traffic: .*? \((\d+)\) data")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, payload."""
    return b"\x00" + struct.pack(">I", len(message)) + message


@dataclass
class LoadResult:
    target: str
    concurrency: int
    connections: int
    requests: int
    succeeded: int
    failed: int
    errored: int
    seconds: float
    data_bytes: int
    latencies_us: list[int]

    @property
    def streams_per_s(self) -> float:
        return self.succeeded / self.seconds if self.seconds else 0.0

    @property
    def bytes_per_stream(self) -> float:
        return self.data_bytes / self.succeeded if self.succeeded else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000

    def summary(self) -> dict:
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errored": self.errored,
            "seconds": round(self.seconds, 4),
            "streams_per_s": round(self.streams_per_s, 1),
            "bytes_per_stream": round(self.bytes_per_stream, 1),
            "p50_ms": round(self.percentile_ms(0.50), 3),
            "p90_ms": round(self.percentile_ms(0.90), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
        }


def percentile(values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))])


def run_h2load(
    url: str,
    *,
    body_file: Path,
    headers: tuple[str, ...],
    requests: int,
    concurrency: int,
    streams_per_connection: int,
    h1: bool,
    log_file: Path,
    timeout_s: float,
) -> LoadResult:
    """Exactly `requests` streams, `concurrency` in flight; killed if it outlives `timeout_s`."""
    if h1:
        connections, per_conn = concurrency, 1
    else:
        connections = max(1, math.ceil(concurrency / streams_per_connection))
        per_conn = math.ceil(concurrency / connections)
    argv = [H2LOAD, "-n", str(requests), "-c", str(connections), "-m", str(per_conn)]
    argv += ["-d", str(body_file), "--log-file", str(log_file)]
    for header in headers:
        argv += ["-H", header]
    if h1:
        argv.append("--h1")
    argv.append(url)
    # h2load appends to its log: a file left by an earlier run would mix its latencies in.
    log_file.unlink(missing_ok=True)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    text = out.stdout + out.stderr
    finished, counts, data = _FINISHED.search(text), _REQUESTS.search(text), _DATA.search(text)
    if out.returncode != 0 or not (finished and counts and data):
        raise RuntimeError(f"h2load failed ({out.returncode}): {text[-1500:]}")
    total, _, _, succeeded, failed, errored, _ = (int(g) for g in counts.groups())
    return LoadResult(
        target=url,
        concurrency=concurrency,
        connections=connections,
        requests=total,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        seconds=float(finished.group(1)) * _UNITS[finished.group(2)],
        data_bytes=int(data.group(1)),
        latencies_us=read_latencies(log_file),
    )


def read_latencies(log_file: Path) -> list[int]:
    """h2load's per-request log: start (us since epoch), status, microseconds to the end."""
    latencies = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].startswith("2"):
            latencies.append(int(parts[2]))
    return latencies
