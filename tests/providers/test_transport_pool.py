"""HTTPTransport's pool: reuse, the cap, expiry, stale sockets, pool timeouts, cancellation."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from llmproxy.server.providers.http import HttpClientSettings, build_http_client
from llmproxy.server.providers.transport import LINGER_S
from tests.providers.raw_http import (
    OK,
    Handler,
    Peer,
    RawServer,
    answer_each,
    client_for,
    hang,
    unfinished,
)

pytestmark = pytest.mark.timeout(5)


# the pool


async def test_sequential_requests_share_one_connection_through_build_http_client() -> None:
    async with RawServer(answer_each(OK)) as server:
        client = build_http_client(HttpClientSettings(read_timeout_s=2.0), base_url=server.url)
        try:
            for i in range(10):
                assert (await client.get(f"/{i}")).text == "ok"
        finally:
            await client.aclose()
    assert len(server.peers) == 1
    assert len(server.peers[0].requests) == 10


async def test_concurrent_requests_open_several_connections_never_more_than_the_cap() -> None:
    async with RawServer(answer_each(OK, delay=0.02)) as server:
        settings = HttpClientSettings(read_timeout_s=2.0, max_connections=3)
        client = build_http_client(settings, base_url=server.url)
        try:
            async with asyncio.timeout(3):
                responses = await asyncio.gather(*(client.get(f"/{i}") for i in range(12)))
        finally:
            await client.aclose()
    assert [r.text for r in responses] == ["ok"] * 12
    assert server.peak == 3
    assert len(server.peers) == 3  # the three were reused, not replaced
    assert sum(len(peer.requests) for peer in server.peers) == 12


async def test_an_idle_connection_older_than_keepalive_expiry_is_not_reused() -> None:
    async with RawServer(answer_each(OK)) as server, client_for(keepalive_expiry=0.05) as client:
        await client.get(server.url)
        await client.get(server.url)  # right away: reused
        await asyncio.sleep(0.1)
        await client.get(server.url)  # too old: a new one
        assert len(server.peers) == 2
        assert await server.peers[0].sees_hang_up()  # and the expired one was closed


async def test_connections_beyond_max_keepalive_are_closed_when_released() -> None:
    server = RawServer(answer_each(OK, delay=0.02))
    async with server, client_for(max_keepalive_connections=1) as client:
        await asyncio.gather(client.get(server.url), client.get(server.url))
        assert len(server.peers) == 2
        eofs = await asyncio.gather(*(peer.sees_hang_up(within=0.3) for peer in server.peers))
        assert sorted(eofs) == [False, True]


async def test_aclose_closes_idle_connections() -> None:
    async with RawServer(answer_each(OK, delay=0.02)) as server:
        client = client_for()
        await asyncio.gather(client.get(server.url), client.get(server.url))
        assert len(server.peers) == 2
        await client.aclose()
        assert all(await asyncio.gather(*(peer.sees_hang_up() for peer in server.peers)))


# stale connections and retries


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def once_then_hang_up(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)

    async with RawServer(once_then_hang_up) as server, client_for() as client:
        await client.get(server.url)
        await asyncio.sleep(0.05)  # the client has seen the EOF by now
        assert (await client.get(server.url)).text == "ok"
    assert [len(peer.requests) for peer in server.peers] == [1, 1]


async def test_a_reused_connection_closed_before_answering_is_retried_once_on_a_new_one() -> None:
    """The idle-close race: the server took the request, then closed without a byte."""

    async def second_request_hangs_up(peer: Peer) -> None:
        if len(server.peers) == 1:
            await peer.read_request()
            await peer.send(OK)
            await peer.read_request()
            return  # hangs up with the request unanswered
        await answer_each(OK)(peer)

    async with RawServer(second_request_hangs_up) as server, client_for() as client:
        await client.get(server.url + "/first")
        response = await client.post(server.url + "/second", content=b"once")
        assert response.text == "ok"
    assert len(server.peers) == 2
    assert [head.split(b" ")[1] for head, _ in server.peers[1].requests] == [b"/second"]
    assert server.peers[1].requests[0][1] == b"once"


async def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.read_request()

    async with RawServer(hang_up) as server, client_for() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(server.url)
    assert len(server.peers) == 1


async def test_a_reused_connection_that_answered_in_part_is_not_retried() -> None:
    async def partial_second(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with RawServer(partial_second) as server, client_for() as client:
        await client.get(server.url)
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)
    assert len(server.peers) == 1


async def test_a_read_timeout_on_a_reused_connection_is_not_retried() -> None:
    """A silent upstream may be working on the request: sending it again would run it twice."""

    async def answer_then_hang(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await hang(peer)

    async with RawServer(answer_then_hang) as server, client_for(timeout=0.2) as client:
        await client.get(server.url)
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.post(server.url, content=b"expensive")
        assert time.monotonic() - started < 0.35
    assert len(server.peers) == 1


async def test_pool_timeout_while_the_only_connection_is_held() -> None:
    async with RawServer(unfinished) as server, client_for(max_connections=1) as client:
        timeout = httpx.Timeout(2.0, pool=0.2)
        async with client.stream("GET", server.url) as held:
            assert held.status_code == 200
            with pytest.raises(httpx.PoolTimeout):
                await client.get(server.url, timeout=timeout)
    assert len(server.peers) == 1


# cancellation


async def test_cancelling_a_request_waiting_for_headers_frees_its_connection() -> None:
    eofs: list[bool] = []
    waiting = asyncio.Event()

    async def first_hangs(peer: Peer) -> None:
        if len(server.peers) == 1:
            await peer.read_request()
            waiting.set()
            eofs.append(await peer.read_to_eof(within=1.0))
            return
        await answer_each(OK)(peer)

    async with RawServer(first_hangs) as server, client_for(max_connections=1) as client:
        task = asyncio.create_task(client.get(server.url))
        async with asyncio.timeout(1):
            await waiting.wait()  # the request is out; the client waits for headers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        response = await client.get(server.url, timeout=httpx.Timeout(2.0, pool=0.3))
        assert response.text == "ok"
    assert eofs == [True]


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    """The slot freed for a waiter that is cancelled in the same tick goes to the next one."""
    gate = asyncio.Event()

    async def first_gated(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await gate.wait()
        await peer.send(b"0\r\n\r\n")
        await answer_each(OK)(peer)

    async with RawServer(first_gated) as server, client_for(max_connections=1) as client:
        timeout = httpx.Timeout(2.0, pool=1.0)
        async with client.stream("GET", server.url) as held:
            second = asyncio.create_task(client.get(server.url, timeout=timeout))
            third = asyncio.create_task(client.get(server.url, timeout=timeout))
            await asyncio.sleep(0.05)  # both wait for the slot
            gate.set()
            await held.aread()  # releases the slot to `second`...
        second.cancel()  # ...which is cancelled before it runs
        results = await asyncio.gather(second, third, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[1], httpx.Response) and results[1].text == "ok"


# an answer its reader finished before the body's end (an SSE reader stops at the terminator)

HEAD_AND_FIRST_CHUNK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"


def end_later(delay: float) -> Handler:
    """Each answer: a first chunk at once, the chunked terminator `delay` seconds later."""

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(HEAD_AND_FIRST_CHUNK)
            await asyncio.sleep(delay)
            await peer.send(b"3\r\nend\r\n0\r\n\r\n")

    return handler


async def read_first_chunk(client: httpx.AsyncClient, url: str, *, whole: bool = True) -> bytes:
    """The first chunk; `whole`: the reader says that was all it needed (as at [DONE])."""
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            if whole:
                response.extensions["finish_in_background"]()
            return chunk  # leaves the body unfinished
    raise AssertionError("no body")


async def test_a_finished_answer_is_read_to_its_end_in_the_background_and_its_socket_reused():
    async with RawServer(end_later(0.05)) as server, client_for(max_connections=1) as client:
        for _ in range(3):
            assert await read_first_chunk(client, server.url) == b"hi"
        # At the cap of one, each request waited for the one before to end, then reused it.
        assert len(server.peers) == 1
        assert len(server.peers[0].requests) == 3


async def test_a_body_left_before_the_answer_was_whole_is_closed_at_once() -> None:
    """A caller that leaves (cancelled, deadline) ends the upstream call now, not later."""

    async def first_chunk_only(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(HEAD_AND_FIRST_CHUNK)
        await peer.read_to_eof()

    async with RawServer(first_chunk_only) as server, client_for() as client:
        assert await read_first_chunk(client, server.url, whole=False) == b"hi"
        assert await server.peers[0].sees_hang_up(within=LINGER_S / 2)


async def test_a_finished_answer_whose_end_never_comes_is_closed_after_the_linger_time() -> None:
    async with RawServer(unfinished) as server, client_for(max_connections=1) as client:
        start = time.monotonic()
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                response.extensions["finish_in_background"]()
                break
        assert await server.peers[0].sees_hang_up(within=1.0)
        assert time.monotonic() - start >= LINGER_S * 0.9
        # Its slot came back: the next request gets a new socket.
        async with client.stream("GET", server.url) as response:
            assert response.status_code == 200
    assert len(server.peers) == 2


async def test_a_finished_answer_whose_socket_closes_frees_its_slot_at_once() -> None:
    async def cut_after_first_chunk(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(HEAD_AND_FIRST_CHUNK)
        await asyncio.sleep(0.02)  # after the reader left; well within the linger time

    async with RawServer(cut_after_first_chunk) as server, client_for(max_connections=1) as client:
        assert await read_first_chunk(client, server.url) == b"hi"
        start = time.monotonic()
        async with client.stream("GET", server.url, timeout=httpx.Timeout(2.0, pool=1.0)):
            pass
        assert time.monotonic() - start < LINGER_S  # not held until the linger timer
    assert len(server.peers) == 2


async def test_aclose_closes_a_lingering_connection() -> None:
    async with RawServer(unfinished) as server:
        client = client_for()
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                response.extensions["finish_in_background"]()
                break
        await client.aclose()
        assert await server.peers[0].sees_hang_up(within=LINGER_S / 2)


async def test_a_finished_answer_with_unread_bytes_buffered_is_pooled() -> None:
    async with RawServer(end_later(0.02)) as server, client_for(max_connections=1) as client:
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                response.extensions["finish_in_background"]()
                await asyncio.sleep(0.1)  # the rest and the end arrive, unread
                break
        assert await read_first_chunk(client, server.url) == b"hi"
    assert len(server.peers) == 1
