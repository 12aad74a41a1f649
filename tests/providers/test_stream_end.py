"""An SSE answer ends at its terminator event: the adapter does not wait for the bytes after
it, and the socket still returns to the pool once they arrive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import time

import pytest

from llmproxy.server.providers.http import HttpClientSettings, build_http_client
from tests.providers.chat_harness import chat, collect, make
from tests.providers.raw_http import Peer, RawServer

pytestmark = pytest.mark.timeout(5)

EVENTS = (
    b'data: {"choices":[{"index":0,"delta":{"content":"Hello"}}]}\n\n',
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
    b"data: [DONE]\n\n",
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def terminator_after(delay: float):
    """Each answer's events at once; the chunked encoding's last chunk `delay` s later."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            await peer.send(head + b"transfer-encoding: chunked\r\n\r\n")
            await peer.send(b"".join(chunk(e) for e in EVENTS))
            await asyncio.sleep(delay)
            await peer.send(b"0\r\n\r\n")

    return handler


async def test_the_answer_ends_at_done_and_its_socket_is_reused_after_the_last_bytes() -> None:
    # Sent before the pool's linger time (LINGER_S) runs out.
    async with RawServer(terminator_after(0.2)) as server:
        client = build_http_client(HttpClientSettings(read_timeout_s=2.0, max_connections=1))
        provider = make("openai_compatible", server.url + "/v1", client, ["sk-test"])
        try:
            start = time.monotonic()
            text, finish, _ = await collect(provider, chat())
            assert time.monotonic() - start < 0.1  # not held for the terminator
            assert (text, finish.usage.output_tokens) == ("Hello", 1)
            # The only slot frees when the terminator lands: the next call reuses the socket.
            text, _, _ = await collect(provider, chat())
            assert text == "Hello"
        finally:
            await client.aclose()
    assert len(server.peers) == 1
    assert len(server.peers[0].requests) == 2


def sse_chunk(text: str) -> bytes:
    event = b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % text.encode()
    return chunk(event)


async def test_the_first_delta_offers_the_text_received_since_without_waiting() -> None:
    async def two_reads(peer: Peer) -> None:
        while await peer.read_request() is not None:
            head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            await peer.send(head + b"transfer-encoding: chunked\r\n\r\n" + sse_chunk("Hello"))
            await asyncio.sleep(0.05)
            await peer.send(sse_chunk(", world") + b"".join(chunk(e) for e in EVENTS[1:]))
            await peer.send(b"0\r\n\r\n")

    async with RawServer(two_reads) as server:
        client = build_http_client(HttpClientSettings(read_timeout_s=2.0, max_connections=1))
        provider = make("openai_compatible", server.url + "/v1", client, ["sk-test"])
        try:
            events = aiter(provider.stream(chat()))
            first = await anext(events)
            assert first.text == "Hello" and first.more is not None
            assert first.more() == ""  # nothing more yet: it does not wait
            await asyncio.sleep(0.2)  # the rest of the answer arrives, unread
            assert first.more() == ", world"
            rest = [event async for event in events]
            # The terminator came with that text: the stream ends with no other delta.
            assert [type(e).__name__ for e in rest] == ["Finish"]
            assert rest[0].usage.output_tokens == 1
            text, _, _ = await collect(provider, chat())  # the socket was pooled
            assert text == "Hello, world"
        finally:
            await client.aclose()
    assert len(server.peers) == 1


async def test_a_read_answer_leaves_no_generator_for_the_event_loop_to_finalise() -> None:
    # A suspended async generator dropped unclosed is closed by the loop's finaliser hook:
    # a new task and a cross-thread wake-up per response, on the hot path.
    finalised: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def finalizer(agen) -> None:
        finalised.append(agen.__qualname__)
        hooks.finalizer(agen)

    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        async with RawServer(terminator_after(0.0)) as server:
            client = build_http_client(HttpClientSettings(read_timeout_s=2.0))
            provider = make("openai_compatible", server.url + "/v1", client, ["sk-test"])
            try:
                text, _, _ = await collect(provider, chat())  # read to the terminator
                assert text == "Hello"
                async with contextlib.aclosing(provider.stream(chat())) as events:
                    await anext(events)  # a caller that leaves after the first delta
                gc.collect()
                await asyncio.sleep(0.01)
            finally:
                await client.aclose()
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert finalised == []
