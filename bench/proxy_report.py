"""Renders a bench/proxy.py result (and optionally an earlier one) as a Markdown table."""

from __future__ import annotations

from collections.abc import Callable

Row = tuple[str, str, str, str, str]


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


def _rate(value: float) -> str:
    return f"{value:,.0f} /s"


def _count(value: float) -> str:
    return f"{value:.2f}"


def _mib(kb: float) -> str:
    return f"{kb / 1024:.1f} MiB"


def _get(report: dict | None, path: str) -> float | None:
    node = report
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node  # type: ignore[return-value]


def _load(meta: dict, when: str) -> str:
    values = meta.get(f"loadavg_{when}") or []
    return "/".join(f"{v:.1f}" for v in values) or "?"


def _pacing(meta: dict) -> str:
    interval = meta.get("interval_ms") or 0
    return f" {interval:g} ms apart" if interval else ""


def render_markdown(report: dict, baseline: dict | None = None) -> str:
    rows: list[Row] = []

    def row(
        label: str,
        direct: str | None,
        gateway: str,
        fmt: Callable[[float], str],
        delta: Callable[[float, float], str] | None = None,
    ) -> None:
        gw = _get(report, gateway)
        d = _get(report, direct) if direct else None
        before = _get(baseline, gateway) if baseline else None
        rows.append(
            (
                label,
                fmt(d) if d is not None else "",
                fmt(gw) if gw is not None else "",
                delta(d, gw) if (delta and d is not None and gw is not None) else "",
                fmt(before) if before is not None else "",
            )
        )

    def added(d: float, gw: float) -> str:
        return f"+{gw - d:.2f} ms"

    def ratio(d: float, gw: float) -> str:
        return f"{gw / d:.0%} of direct" if d else ""

    c1 = "loads.1"
    row("Stream time, 1 stream, p50", f"{c1}.direct.p50_ms", f"{c1}.gateway.p50_ms", _ms, added)
    row("Stream time, 1 stream, p99", f"{c1}.direct.p99_ms", f"{c1}.gateway.p99_ms", _ms, added)
    row("Time to first token, p50", "ttft.direct.p50_ms", "ttft.gateway.p50_ms", _ms, added)
    row("Time to first token, p99", "ttft.direct.p99_ms", "ttft.gateway.p99_ms", _ms, added)
    for c in ("1", "16", "64"):
        row(
            f"Throughput, {c} concurrent",
            f"loads.{c}.direct.streams_per_s",
            f"loads.{c}.gateway.streams_per_s",
            _rate,
            ratio,
        )
    for c in ("16", "64"):
        for q in ("p50", "p99"):
            row(
                f"Stream time, {c} concurrent, {q}",
                f"loads.{c}.direct.{q}_ms",
                f"loads.{c}.gateway.{q}_ms",
                _ms,
                added,
            )
    for c in ("1", "64"):
        row(
            f"gRPC messages per stream, {c} concurrent",
            None,
            f"loads.{c}.gateway_messages_per_stream",
            _count,
        )
    row("Gateway CPU per stream, 64 concurrent", None, "loads.64.gateway_cpu_ms_per_stream", _ms)
    row("Server-reported proxy overhead, p50", None, "server_proxy_overhead_ms.p50", _ms)
    row("Gateway RSS, idle", None, "memory_kb.idle", _mib)
    row("Gateway RSS, peak under 64 streams", None, "memory_kb.peak_c64", _mib)
    row("Gateway RSS, idle after the loads", None, "memory_kb.after_load", _mib)

    with_before = baseline is not None
    header = ["Measure", "Direct to upstream", "Through gateway", "Added / ratio"]
    if with_before:
        label = (baseline.get("meta") or {}).get("label")
        header.append(f"Gateway before ({label})" if label else "Gateway before")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = list(r if with_before else r[:4])
        lines.append("| " + " | ".join(cells) + " |")
    meta = report["meta"]
    lines.append("")
    lines.append(
        f"{meta['mode']} run, commit {meta['commit']}, {meta['cpus']} CPUs, "
        f"{meta.get('workers', 1)} gateway worker(s), "
        f"Python {meta['python']}, {meta['chunks']} chunks per answer"
        f"{_pacing(meta)}, "
        f"{meta['streams_per_connection']} gRPC streams per h2load connection, "
        f"{meta['seconds']} s; "
        f"load average {_load(meta, 'before')} before, {_load(meta, 'after')} after."
    )
    return "\n".join(lines)
