"""JSON log lines leave through a listener thread, complete and in order."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from llmproxy.server import logs
from llmproxy.server.config.observability import LoggingConfig


@pytest.fixture
def captured(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    listener = logs.configure_logging(LoggingConfig(level="INFO", format="json"))
    yield stream, listener
    root.handlers[:], level = saved
    root.setLevel(level)


def test_lines_are_json_with_extra_fields_and_exceptions(captured):
    stream, listener = captured
    log = logging.getLogger("llmproxy.test")
    log.info("served %s", "q1", extra={"request_id": "r-1", "latency_ms": 12})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed", extra={"request_id": "r-2"})
    listener.stop()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "served q1" and first["request_id"] == "r-1"
    assert first["latency_ms"] == 12 and first["level"] == "info"
    assert second["request_id"] == "r-2"
    assert "ValueError: boom" in second["exception"]


def test_lines_are_written_while_running_in_order_and_in_few_writes(captured, monkeypatch):
    stream, listener = captured
    writes = []
    original = stream.write
    monkeypatch.setattr(stream, "write", lambda text: writes.append(text) or original(text))
    log = logging.getLogger("llmproxy.test")
    for i in range(500):
        log.info("line", extra={"n": i})
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    numbers = [json.loads(line)["n"] for line in stream.getvalue().splitlines()]
    assert numbers == list(range(500))  # written without stop(), every line, in order
    assert len(writes) < 50  # batched, not one write per line
    listener.stop()
