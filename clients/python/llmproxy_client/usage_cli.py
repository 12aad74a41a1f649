"""The `llmproxy usage` command: spend and tokens by day, key and model over a time range."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from llmproxy.v1 import llmproxy_pb2 as pb

_AGO = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """`7d`, `24h`, `30m`, `2w` (that long ago), or an ISO date/time (UTC unless it says)."""
    now = now or datetime.now(UTC)
    if match := _AGO.match(text.strip()):
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected e.g. 7d, 24h, 30m or 2024-05-01[T12:00]"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_parser(sub, client_args: Callable[[argparse.ArgumentParser], None], handler) -> None:
    usage = sub.add_parser("usage", help="show spend and tokens by day, key and model")
    client_args(usage)
    usage.add_argument("--since", type=parse_time, default="7d", help="default: 7d")
    usage.add_argument("--until", type=parse_time, default=None, help="default: now")
    usage.add_argument("--key", default="", help="only this API key id")
    usage.add_argument("--model", "-m", default="", help="only this model")
    usage.add_argument("--json", action="store_true")
    usage.set_defaults(handler=handler)


def render(response: pb.GetUsageResponse, as_json: bool = False) -> str:
    if as_json:
        return json_format.MessageToJson(response, indent=None)
    lines = [
        f"{'DAY':<10}  {'KEY':<16} {'MODEL':<24} {'REQUESTS':>8} {'ERRORS':>6} {'HITS':>6} "
        f"{'IN TOKENS':>11} {'OUT TOKENS':>11} {'COST USD':>12}"
    ]
    for r in response.rows:
        lines.append(
            f"{r.day:<10}  {r.key_id:<16} {r.model:<24} {r.requests:>8} {r.errors:>6} "
            f"{r.cache_hits:>6} {r.input_tokens:>11} {r.output_tokens:>11} {r.cost_usd:>12.6f}"
        )
    lines.append(
        f"{'TOTAL':<10}  {'':<16} {'':<24} {response.total_requests:>8} {'':>6} {'':>6} "
        f"{response.total_input_tokens:>11} {response.total_output_tokens:>11} "
        f"{response.total_cost_usd:>12.6f}"
    )
    return "\n".join(lines)
