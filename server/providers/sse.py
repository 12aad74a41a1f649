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
    """

    __slots__ = ("_buffer", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = b""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        # A read that ended in CR has ended its line already (a CR-only stream must not
        # wait for more bytes); an LF opening the next read is then that CRLF's second half.
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if chunk:
            self._skip_lf = chunk[-1:] == b"\r"
        buf = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buffer = lines.pop()
        events: list[SSEEvent] = []
        data = self._data
        # Bytes until an event is complete: one decode per event, not one per line.
        for raw in lines:
            if not raw:
                if data:
                    text = data[0] if len(data) == 1 else b"\n".join(data)
                    event = self._event.decode() if self._event else "message"
                    events.append(SSEEvent(event, text.decode()))
                    data = self._data = []
                self._event = b""
            elif raw[:5] == b"data:":
                data.append(raw[6:] if raw[5:6] == b" " else raw[5:])
            elif raw[:1] != b":":
                name, _, value = raw.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data.append(value)
                elif name == b"event":
                    self._event = value
        return events

    @property
    def pending(self) -> bool:
        """True when bytes or fields of an unfinished event are buffered."""
        return bool(self._buffer or self._data)
