"""The incremental SSE parser: events split across reads at every byte boundary, CRLF and CR
line endings, comments, multi-line data, and the WHATWG field rules."""

from __future__ import annotations

import random

import pytest

from llmproxy.server.providers.sse import SSEEvent, SSEParser

STREAM = (
    ": this is a comment\n"
    "event: message_start\n"
    'data: {"type": "message_start"}\n'
    "\n"
    "data: first line\n"
    "data: second line\n"
    "id: 7\n"
    "retry: 1000\n"
    "\n"
    ": keep-alive\n"
    "\n"
    "data:no space\n"
    "\n"
    "data:  two spaces\n"
    "\n"
    "data\n"
    "\n"
    "event: ping\n"
    "data: {}\n"
    "\n"
    "data: Ελλάδα — naïve 🚀\n"
    "\n"
    "data: [DONE]\n"
    "\n"
)
EXPECTED = [
    SSEEvent("message_start", '{"type": "message_start"}'),
    SSEEvent("message", "first line\nsecond line"),
    SSEEvent("message", "no space"),
    SSEEvent("message", " two spaces"),
    SSEEvent("message", ""),
    SSEEvent("ping", "{}"),
    SSEEvent("message", "Ελλάδα — naïve 🚀"),
    SSEEvent("message", "[DONE]"),
]


def parse(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for c in chunks:
        events.extend(parser.feed(c))
    assert not parser.pending
    return events


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_split_at_every_byte_boundary(newline):
    raw = STREAM.replace("\n", newline).encode()
    for cut in range(len(raw) + 1):
        assert parse(raw[:cut], raw[cut:]) == EXPECTED, (newline, cut)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_byte_by_byte(newline):
    raw = STREAM.replace("\n", newline).encode()
    assert parse(*(raw[i : i + 1] for i in range(len(raw)))) == EXPECTED


def test_random_splits_into_many_pieces():
    raw = STREAM.replace("\n", "\r\n").encode()
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 20)))
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
        assert parse(*pieces) == EXPECTED


def test_cr_then_lf_in_the_next_read_is_one_line_end():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []
    assert parser.pending
    # The CR ends the event at once (no waiting for a possible LF)...
    assert parser.feed(b"\r") == [SSEEvent("message", "a")]
    # ...and the LF that follows is its CRLF's second half, not another blank line.
    assert parser.feed(b"\ndata: b\n\n") == [SSEEvent("message", "b")]
    assert not parser.pending


def test_blank_lines_and_comments_alone_dispatch_nothing():
    assert parse(b"\n\n: c1\n\n:c2\r\n\r\n") == []


def test_unfinished_event_is_pending_not_dispatched():
    parser = SSEParser()
    assert parser.feed(b"data: partial\n") == []
    assert parser.pending
    assert parser.feed(b"") == []


def test_event_type_resets_after_each_event():
    events = parse(b"event: error\ndata: x\n\ndata: y\n\n")
    assert [e.event for e in events] == ["error", "message"]
