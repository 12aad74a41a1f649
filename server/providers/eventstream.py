"""Incremental decoding of AWS event-stream framing (application/vnd.amazon.eventstream).

Each message: a 12-byte prelude (total length, headers length, CRC32 of those
8 bytes), typed headers, the payload, and a CRC32 of everything before it.
Both checksums are verified: a corrupted or misaligned stream fails loudly
instead of yielding garbage.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from typing import Any

PRELUDE = 12
# The largest message AWS documents is 16 MiB; anything bigger is a framing error.
MAX_MESSAGE = 16 * 1024 * 1024
_FIXED = {2: ">b", 3: ">h", 4: ">i", 5: ">q", 8: ">q"}


class EventStreamError(ValueError):
    """The bytes are not valid event-stream framing."""


def parse_headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    i = 0
    while i < len(data):
        size = data[i]
        name = data[i + 1 : i + 1 + size].decode("utf-8")
        i += 1 + size
        kind = data[i]
        i += 1
        if kind in (0, 1):
            value: Any = kind == 0
        elif kind in _FIXED:
            fmt = _FIXED[kind]
            (value,) = struct.unpack_from(fmt, data, i)
            i += struct.calcsize(fmt)
        elif kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, i)
            raw = data[i + 2 : i + 2 + length]
            value = raw.decode("utf-8") if kind == 7 else bytes(raw)
            i += 2 + length
        elif kind == 9:
            value = uuid.UUID(bytes=bytes(data[i : i + 16]))
            i += 16
        else:
            raise EventStreamError(f"unknown header value type {kind}")
        headers[name] = value
    return headers


class EventStreamDecoder:
    """Feed raw bytes as they arrive; get back (headers, payload) of every complete message."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        buf = self._buffer
        buf += data
        messages: list[tuple[dict[str, Any], bytes]] = []
        start = 0
        while len(buf) - start >= PRELUDE:
            total, headers_len, prelude_crc = struct.unpack_from(">III", buf, start)
            if zlib.crc32(buf[start : start + 8]) != prelude_crc:
                raise EventStreamError("prelude checksum mismatch")
            if not PRELUDE + 4 <= total <= MAX_MESSAGE or headers_len > total - PRELUDE - 4:
                raise EventStreamError(f"bad message length {total}")
            if len(buf) - start < total:
                break
            end = start + total
            (message_crc,) = struct.unpack_from(">I", buf, end - 4)
            if zlib.crc32(buf[start : end - 4]) != message_crc:
                raise EventStreamError("message checksum mismatch")
            headers_end = start + PRELUDE + headers_len
            headers = parse_headers(bytes(buf[start + PRELUDE : headers_end]))
            messages.append((headers, bytes(buf[headers_end : end - 4])))
            start = end
        del buf[:start]
        return messages

    @property
    def pending(self) -> bool:
        return bool(self._buffer)
