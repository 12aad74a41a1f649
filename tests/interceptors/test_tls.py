"""TLS and mTLS handshakes with certificates made here, client identities, and cert reload."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmproxy.client import AsyncLLMProxyClient
from tests.interceptors.conftest import key_entry, mock_settings
from tests.support.running import running_app


@dataclass
class Issued:
    cert: bytes
    key: bytes


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class CertificateAuthority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@pytest.fixture(scope="module")
def pki():
    ca, rogue = CertificateAuthority("llmproxy test CA"), CertificateAuthority("rogue CA")
    return {
        "ca": ca,
        "rogue": rogue,
        "server": ca.issue("localhost", server=True),
        "team-a": ca.issue("team-a", server=False),
        "intruder": rogue.issue("team-a", server=False),
    }


def write_tls(tmp_path: Path, pki, *, mutual: bool = False, **extra) -> dict:
    (tmp_path / "server.pem").write_bytes(pki["server"].cert)
    (tmp_path / "server.key").write_bytes(pki["server"].key)
    tls = {"cert_file": str(tmp_path / "server.pem"), "key_file": str(tmp_path / "server.key")}
    if mutual:
        (tmp_path / "ca.pem").write_bytes(pki["ca"].pem)
        tls |= {"client_ca_file": str(tmp_path / "ca.pem"), "require_client_cert": True}
    return tls | extra


def tls_client(app, roots: bytes, identity: Issued | None = None, **kw) -> AsyncLLMProxyClient:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=identity.key if identity else None,
        certificate_chain=identity.cert if identity else None,
    )
    return AsyncLLMProxyClient(
        f"127.0.0.1:{app.grpc_port}", credentials=credentials, timeout=5, **kw
    )


def rotate(tls: dict, *, cert: bytes, key: bytes | None = None) -> None:
    if key is not None:
        Path(tls["key_file"]).write_bytes(key)
    Path(tls["cert_file"]).write_bytes(cert)


async def fails_handshake(client: AsyncLLMProxyClient) -> None:
    async with client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.status(timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_handshake_and_plaintext_refused(tmp_path, pki):
    async with running_app(mock_settings(tls=write_tls(tmp_path, pki))) as app:
        async with tls_client(app, pki["ca"].pem) as c:
            assert (await c.query("hi", model="fast")).done.model == "fast"
        await fails_handshake(tls_client(app, pki["rogue"].pem))  # server not trusted
        async with AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await plain.status(timeout=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_our_ca_and_rejects_others(tmp_path, pki):
    async with running_app(mock_settings(tls=write_tls(tmp_path, pki, mutual=True))) as app:
        async with tls_client(app, pki["ca"].pem, pki["team-a"]) as c:
            assert (await c.status()).models
        await fails_handshake(tls_client(app, pki["ca"].pem))  # no client certificate
        await fails_handshake(tls_client(app, pki["ca"].pem, pki["intruder"]))  # wrong CA


async def test_client_certificate_is_the_key_id_with_that_keys_scopes(tmp_path, pki, keys, logs):
    settings = mock_settings(
        tls=write_tls(tmp_path, pki, mutual=True, client_cert_identity=True),
        auth={
            "enabled": True,
            "api_keys": [key_entry("team-a", keys["team-a"], scopes={"models": ["fast"]})],
        },
    )
    async with running_app(settings) as app, tls_client(app, pki["ca"].pem, pki["team-a"]) as c:
        assert (await c.query("hi", model="fast")).done.model == "fast"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await c.query("hi", model="smart")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A key sent alongside the certificate takes precedence.
        async with tls_client(app, pki["ca"].pem, pki["team-a"], api_key="llmp_wrong") as bad:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await bad.status()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [e["key_id"] for e in logs.access()][:2] == ["team-a", "team-a"]


async def test_certificate_is_reloaded_when_the_files_change(tmp_path, pki):
    tls = write_tls(tmp_path, pki, reload_check_s=0)
    async with running_app(mock_settings(tls=tls)) as app:
        async with tls_client(app, pki["ca"].pem) as c:
            await c.status()
        rotated = pki["rogue"].issue("localhost", server=True)
        rotate(tls, key=rotated.key, cert=rotated.cert)
        async with tls_client(app, pki["rogue"].pem) as c:
            assert (await c.status()).models  # a new connection sees the new certificate
        await fails_handshake(tls_client(app, pki["ca"].pem))


async def test_a_half_rotated_pair_keeps_the_old_certificate(tmp_path, pki, logs):
    tls = write_tls(tmp_path, pki, reload_check_s=0)
    async with running_app(mock_settings(tls=tls)) as app:
        rotated = pki["rogue"].issue("localhost", server=True)
        rotate(tls, cert=rotated.cert)  # the new key has not arrived yet
        async with tls_client(app, pki["ca"].pem) as c:
            assert (await c.status()).models
    assert any("keeping the current certificate" in r.getMessage() for r in logs.records)


async def test_certificate_names_the_caller_with_auth_off(tmp_path, pki, logs):
    settings = mock_settings(tls=write_tls(tmp_path, pki, mutual=True, client_cert_identity=True))
    async with running_app(settings) as app, tls_client(app, pki["ca"].pem, pki["team-a"]) as c:
        assert (await c.query("hi", model="smart")).done.model == "smart"
    assert [e["key_id"] for e in logs.access()] == ["team-a"]
