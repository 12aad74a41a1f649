"""HTTPTransport on the wire: response framing, streaming, errors and TLS, on loopback."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import hashlib
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmproxy.server.providers.http1 import HIGH_WATER
from llmproxy.server.providers.transport import HTTPTransport
from tests.providers.raw_http import (
    OK,
    Peer,
    RawServer,
    answer_each,
    client_for,
    hang,
    unfinished,
)

pytestmark = pytest.mark.timeout(5)


# framing


FRAMINGS = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, b"hello", True),
    "chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        200,
        b"hello world",
        True,
    ),
    "close-delimited": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        200,
        b"until the end",
        False,
    ),
    "no-length-no-close-header": (b"HTTP/1.1 200 OK\r\n\r\nto eof", 200, b"to eof", False),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    "304-with-length": (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", 304, b"", True),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, 200, b"ok", True),
    "103-early-hints": (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + OK,
        200,
        b"ok",
        True,
    ),
    "connection-close-with-length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        200,
        b"ok",
        False,
    ),
    "http/1.0": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, b"ok", False),
}


@pytest.mark.parametrize("case", FRAMINGS)
async def test_each_framing_gives_the_body_and_reuses_only_a_keep_alive_connection(
    case: str,
) -> None:
    raw, status, body, reusable = FRAMINGS[case]
    # Close-delimited bodies need the server to hang up; the others keep the socket
    # open, so a client that reused a `Connection: close` one would be answered.
    closes = not reusable and b"Content-Length" not in raw
    async with RawServer(answer_each(raw, close=closes)) as server, client_for() as client:
        for _ in range(3):
            response = await client.get(server.url + "/x")
            assert (response.status_code, response.content) == (status, body)
    assert len(server.peers) == (1 if reusable else 3)
    assert all(len(peer.requests) == (3 if reusable else 1) for peer in server.peers)


async def test_interim_headers_do_not_leak_into_the_final_response() -> None:
    raw = FRAMINGS["103-early-hints"][0]
    async with RawServer(answer_each(raw)) as server, client_for() as client:
        response = await client.get(server.url)
    assert "link" not in response.headers
    assert response.reason_phrase == "OK"


async def test_head_returns_no_body_whatever_content_length_says() -> None:
    async def head_then_get(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            head_only = request[0].startswith(b"HEAD ")
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            if not head_only:
                await peer.send(b"x" * 1000)

    async with RawServer(head_then_get) as server, client_for(timeout=1.0) as client:
        started = time.monotonic()
        response = await client.head(server.url)
        assert response.content == b""
        assert response.headers["content-length"] == "1000"
        assert (await client.get(server.url + "/after")).content == b"x" * 1000
        assert time.monotonic() - started < 0.5  # no wait for 1000 bytes that never come


async def test_request_bodies_arrive_intact_small_large_and_streamed() -> None:
    async def echo_hash(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            digest = hashlib.sha256(request[1]).hexdigest().encode()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 64\r\n\r\n" + digest)

    large = bytes(range(256)) * 8192  # 2 MiB: sent apart from the head

    async def parts() -> AsyncIterator[bytes]:
        yield b"streamed "
        yield b"request body"

    async with RawServer(echo_hash) as server, client_for() as client:
        for content in (b'{"small": true}', large):
            response = await client.post(server.url, content=content)
            assert response.text == hashlib.sha256(content).hexdigest()
        response = await client.post(server.url, content=parts())
        assert response.text == hashlib.sha256(b"streamed request body").hexdigest()
    assert len(server.peers) == 1


# streaming


async def test_chunks_arrive_as_they_are_sent() -> None:
    first_seen = asyncio.Event()

    async def two_chunks(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await first_seen.wait()  # only once the client has the first chunk
        await peer.send(b"6\r\nsecond\r\n0\r\n\r\n")

    chunks = []
    async with (
        RawServer(two_chunks) as server,
        client_for() as client,
        asyncio.timeout(2),
        client.stream("GET", server.url) as response,
    ):
        async for chunk in response.aiter_raw():
            chunks.append(chunk)
            first_seen.set()
    assert chunks == [b"first", b"second"]


async def test_a_consumer_that_stops_early_closes_the_connection() -> None:
    async with RawServer(unfinished) as server, client_for() as client:
        async with client.stream("GET", server.url) as response:
            async for _ in response.aiter_raw():
                break
        async with client.stream("GET", server.url) as response:
            pass  # not a byte read
        response = await client.send(client.build_request("GET", server.url), stream=True)
        await response.aclose()
        assert all(await asyncio.gather(*(peer.sees_hang_up() for peer in server.peers)))
    assert len(server.peers) == 3  # none went back to the pool


async def test_a_large_body_read_slowly_arrives_intact_with_bounded_buffering() -> None:
    payload = hashlib.sha256(b"seed").digest() * (6 * 1024 * 1024 // 32)  # 6 MiB

    async def big(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for i in range(0, len(payload), 65536):
            await peer.send(payload[i : i + 65536])

    digest = hashlib.sha256()
    largest = 0
    async with (
        RawServer(big) as server,
        client_for() as client,
        client.stream("GET", server.url) as response,
    ):
        # Each step yields everything buffered since the last one, so a step's size
        # is the client's buffer: bounded by the high-water mark plus one read.
        async for chunk in response.aiter_raw():
            digest.update(chunk)
            largest = max(largest, len(chunk))
            await asyncio.sleep(0.01)
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert largest <= HIGH_WATER + 256 * 1024


async def test_a_gzip_body_is_decoded_by_httpx() -> None:
    text = b"decoded " * 4096
    packed = gzip.compress(text)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    halves = (packed[: len(packed) // 2], packed[len(packed) // 2 :])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in halves) + b"0\r\n\r\n"
    async with RawServer(answer_each(head + chunked)) as server, client_for() as client:
        async with client.stream("GET", server.url) as response:
            decoded = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert decoded == text
        assert (await client.get(server.url)).content == text


# timeouts and errors


async def test_read_timeout_between_chunks() -> None:
    async def stall(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n")
        await peer.read_to_eof()

    async with RawServer(stall) as server, client_for(timeout=0.2) as client:
        async with client.stream("GET", server.url) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await response.aread()
        assert await server.peers[0].sees_hang_up()


async def test_read_timeout_before_headers() -> None:
    async with RawServer(hang) as server, client_for(timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url)
        assert 0.15 < time.monotonic() - started < 0.5


async def test_a_refused_connection_is_a_connect_error_not_a_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        async with client_for() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTX/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ],
    ids=["bad-version", "bad-status", "bad-chunk-size", "two-lengths"],
)
async def test_a_malformed_response_is_a_remote_protocol_error(raw: bytes) -> None:
    async with RawServer(answer_each(raw)) as server, client_for() as client:
        for _ in range(2):
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(server.url)
    assert len(server.peers) == 2  # the broken connection was not reused


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Len",
    ],
    ids=["content-length", "chunked", "in-headers"],
)
async def test_a_server_closing_mid_response_is_a_remote_protocol_error(raw: bytes) -> None:
    async with RawServer(answer_each(raw, close=True)) as server, client_for() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)


# TLS


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a leaf for 127.0.0.1 and localhost; a client one trusting its CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmproxy test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    directory = tmp_path_factory.mktemp("tls")
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(directory / "leaf.pem", directory / "key.pem")
    client_ctx = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server_ctx, client_ctx


async def test_tls_with_a_context_trusting_the_ca(tls) -> None:
    server_ctx, client_ctx = tls
    async with RawServer(answer_each(OK), server_ctx) as server:
        transport = HTTPTransport(ssl_context=client_ctx)
        async with httpx.AsyncClient(transport=transport, timeout=2.0) as client:
            for _ in range(3):
                assert (await client.get(server.url)).text == "ok"
            port = server.url.rsplit(":", 1)[1]
            assert (await client.get(f"https://localhost:{port}/")).text == "ok"
    assert len(server.peers) == 2  # one per origin, each reused


async def test_tls_with_the_default_context_rejects_an_unknown_ca(tls) -> None:
    server_ctx, _ = tls
    async with RawServer(answer_each(OK), server_ctx) as server, client_for() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(server.url)
