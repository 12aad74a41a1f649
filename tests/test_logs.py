"""JSON log lines leave through a listener thread, complete and in order."""

from __future__ import annotations

import io
import json
import logging

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
