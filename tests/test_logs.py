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


def test_an_entry_is_written_exactly_as_the_formatter_writes_its_record():
    fields = {"rpc": "Query", "request_id": "r-1", "latency_ms": 1.5, "input_tokens": 3}
    entry = logs.Entry("llmproxy.access", logging.INFO, "rpc", fields)
    entry.worker = 1
    record = logging.getLogger("llmproxy.access").makeRecord(
        "llmproxy.access", logging.INFO, __file__, 0, "rpc", (), None, extra=dict(fields)
    )
    record.created = entry.created
    record.worker = 1
    assert entry.line() == logs.JsonFormatter().format(record)


def test_fields_skip_the_record_only_when_our_queue_alone_would_see_it(captured):
    stream, listener = captured
    log = logging.getLogger("llmproxy.access")
    root = logging.getLogger()
    root.handlers[:] = root.handlers[:1]  # ours alone, without pytest's capture handler
    queued = root.handlers[0].queue
    logs.log_fields(log, logging.INFO, "rpc", {"request_id": "direct"})
    assert type(queued.get_nowait()) is logs.Entry

    seen: list[logging.LogRecord] = []
    other = logging.Handler()
    other.emit = seen.append
    logging.getLogger("llmproxy").addHandler(other)  # e.g. a test's or an app's own handler
    try:
        logs.log_fields(log, logging.INFO, "rpc", {"request_id": "as-record"})
    finally:
        logging.getLogger("llmproxy").removeHandler(other)
    assert [r.request_id for r in seen] == ["as-record"]
    assert isinstance(queued.get_nowait(), logging.LogRecord)

    logs.log_fields(log, logging.INFO, "rpc", {"request_id": "written"})
    listener.stop()
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["request_id"] == "written"
    assert json.loads(line)["logger"] == "llmproxy.access"


def test_text_logs_keep_every_line_a_record(monkeypatch):
    monkeypatch.setattr(logs.sys, "stderr", io.StringIO())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    listener = logs.configure_logging(LoggingConfig(level="INFO", format="text"))
    try:
        logs.log_fields(logging.getLogger("llmproxy.access"), logging.INFO, "rpc", {"a": 1})
        assert isinstance(root.handlers[0].queue.get_nowait(), logging.LogRecord)
    finally:
        listener.stop()
        root.handlers[:], level = saved
        root.setLevel(level)
