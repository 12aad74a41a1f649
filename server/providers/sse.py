"""Incremental Server-Sent Events parsing, tolerant of events split across reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str
    data: str


class SSEParser:
    """Feed raw bytes as they arrive; get back every event completed by them.

    Follows the WHATWG framing: lines end in LF, CRLF or CR; a blank line ends
    an event; `data:` lines join with LF; comment lines (`:`) are ignored.
    Bytes wait in the buffer until their event's blank line arrives, then the event
    is read as one block: most are a single `data: ` line, taken without a line loop.
    """

    __slots__ = ("_buffer", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return [SSEEvent(name.decode(), data.decode()) for name, data in self.feed_raw(chunk)]

    def feed_raw(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """Like `feed`, as (event name, data) bytes: for decoders that parse bytes anyway."""
        # A read that ended in CR has ended its line already (a CR-only stream must not
        # wait for more bytes); an LF opening the next read is then that CRLF's second half.
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if chunk:
            self._skip_lf = chunk[-1:] == b"\r"
        buf = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        blocks = buf.split(b"\n\n")
        self._buffer = blocks.pop()
        events: list[tuple[bytes, bytes]] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                events.append((b"message", block[6:]))
            elif block:
                _read_block(block, events)
        return events

    @property
    def pending(self) -> bool:
        """True when bytes of an unfinished event are buffered."""
        return bool(self._buffer.strip(b"\n"))


def _read_block(block: bytes, events: list[tuple[bytes, bytes]]) -> None:
    """One event's lines (no blank line inside, by the split; one may lead)."""
    data: list[bytes] = []
    event = b""
    for raw in block.split(b"\n"):
        if raw[:5] == b"data:":
            data.append(raw[6:] if raw[5:6] == b" " else raw[5:])
        elif raw and raw[:1] != b":":
            name, _, value = raw.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value
    if data:
        events.append((event or b"message", data[0] if len(data) == 1 else b"\n".join(data)))
