"""Authentication and authorisation through a real server: API keys, JWTs, scopes, open probes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import time
from datetime import UTC, datetime, timedelta

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from llmproxy.client import AsyncLLMProxyClient
from llmproxy.client.cli import main as cli_main
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.interceptors.conftest import key_entry, mock_settings
from tests.support.running import running_app, running_client
from tests.test_grpcurl import GRPCURL, grpcurl

SECRET = "hs256-test-secret-that-is-long-enough-0123456789"
ISSUER = "https://issuer.test"


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, "the status carries google.rpc details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status details")


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def auth_settings(keys: dict[str, str], **auth):
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    return mock_settings(
        auth={
            "enabled": True,
            "api_keys": [
                key_entry("team-a", keys["team-a"]),
                key_entry(
                    "team-b",
                    keys["team-b"],
                    scopes={"models": ["fast"], "rpcs": ["Query", "ParallelQuery"]},
                ),
                key_entry("expired", keys["expired"], expires_at=past),
            ],
            **auth,
        }
    )


@pytest.fixture
async def gateway(keys, logs):
    async with running_app(auth_settings(keys)) as app:
        yield app


def client_for(app, key: str | None = None, **kwargs) -> AsyncLLMProxyClient:
    return AsyncLLMProxyClient(f"127.0.0.1:{app.grpc_port}", api_key=key, **kwargs)


async def test_key_accepted_as_bearer_and_as_x_api_key(gateway, keys, logs):
    for header in ("authorization", "x-api-key"):
        async with client_for(gateway, keys["team-a"], api_key_header=header) as client:
            result = await client.query("hello", model="smart")
            assert result.done.model == "smart"
            assert (await client.status()).models
    lines = [e for e in logs.access() if e["service"] == "llmproxy.v1.LLMProxy"]
    assert [e["key_id"] for e in lines] == ["team-a"] * 4
    logs.assert_no_secret(*keys.values())


async def test_missing_key_is_unauthenticated(gateway, logs):
    async with client_for(gateway) as client:
        error = await refused(client.query("hello", model="fast"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_info(error)
        assert (info.reason, info.metadata["cause"]) == ("UNAUTHENTICATED", "missing_credentials")
        assert (await refused(client.status())).code() == grpc.StatusCode.UNAUTHENTICATED
    assert [e["code"] for e in logs.access()] == ["UNAUTHENTICATED", "UNAUTHENTICATED"]


async def test_wrong_key_is_unauthenticated_and_never_echoed(gateway, logs):
    wrong = "llmp_this-key-does-not-exist-0123456789abcdef"
    async with client_for(gateway, wrong) as client:
        error = await refused(client.query("hello", model="fast"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).metadata["cause"] == "invalid_key"
    everything = (
        error.details() + repr(error.trailing_metadata()) + repr(error.debug_error_string())
    )
    assert wrong not in everything
    logs.assert_no_secret(wrong)


async def test_expired_key_is_unauthenticated(gateway, keys):
    async with client_for(gateway, keys["expired"]) as client:
        error = await refused(client.query("hello", model="fast"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).metadata["cause"] == "expired_key"
    assert keys["expired"] not in error.details()


async def test_scopes_limit_rpcs_and_models(gateway, keys, logs):
    async with client_for(gateway, keys["team-b"]) as client:
        assert (await client.query("hello", model="fast")).done.model == "fast"
        for call, cause in [
            (client.query("hello", model="smart"), "model_not_allowed"),
            (client.query("hello"), "model_not_allowed"),  # auto routing is not in scope
            (client.status(), "rpc_not_allowed"),
            (
                client.download("text", pb.DOCUMENT_FORMAT_TXT),
                "rpc_not_allowed",
            ),
        ]:
            error = await refused(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_info(error).metadata["cause"] == cause
            assert keys["team-b"] not in error.details()
        both = pb.ParallelQueryRequest(query="hi", models=["fast", "smart"])
        error = await refused(_drain(client.parallel(both)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        events = [
            e async for e in client.parallel(pb.ParallelQueryRequest(query="hi", models=["fast"]))
        ]
        assert events[-1].summary.succeeded == 1
    assert [e["key_id"] for e in logs.access()] == ["team-b"] * 7


async def _drain(stream) -> list:
    return [e async for e in stream]


async def test_health_and_reflection_need_no_credentials(gateway):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="llmproxy.v1.LLMProxy"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    code, out, err = await grpcurl(gateway.grpc_port, "list")
    assert code == 0, err
    assert "llmproxy.v1.LLMProxy" in out.split()
    code, out, err = await grpcurl(gateway.grpc_port, "llmproxy.v1.LLMProxy/Status")
    assert code != 0 and "Unauthenticated" in out + err


def hs256(claims: dict, secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def hmac_token(payload: dict, secret: bytes) -> str:
    """HS256 by hand: pyjwt itself refuses key-looking secrets, an attacker would not."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = (
        b64(b'{"alg":"HS256","typ":"JWT","kid":"k1"}') + "." + b64(json.dumps(payload).encode())
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"sub": "svc-reports", "iss": ISSUER, "aud": "llmproxy", "iat": now, "exp": now + 300}
    return {**base, **overrides}


@pytest.fixture
async def jwt_gateway(keys, logs):
    settings = auth_settings(
        keys, jwt={"issuer": ISSUER, "audience": "llmproxy", "hs256_secret": SECRET}
    )
    async with running_app(settings) as app:
        yield app


async def test_jwt_accepted_and_its_scopes_apply(jwt_gateway, logs):
    token = hs256(claims(scope="openid model:fast rpc:Query"))
    async with client_for(jwt_gateway, token) as client:
        assert (await client.query("hello", model="fast")).done.model == "fast"
        error = await refused(client.query("hello", model="smart"))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await refused(client.status())).code() == grpc.StatusCode.PERMISSION_DENIED
    assert {e["key_id"] for e in logs.access()} == {"svc-reports"}
    logs.assert_no_secret(token, SECRET)


@pytest.mark.parametrize(
    ("token", "cause"),
    [
        (hs256(claims(exp=int(time.time()) - 120)), "expired_token"),
        (hs256(claims(aud="someone-else")), "wrong_audience"),
        (hs256(claims(iss="https://evil.test")), "wrong_issuer"),
        (hs256(claims(), secret="not-the-secret-but-long-enough-012345"), "invalid_token"),
        (jwt.encode(claims(), None, algorithm="none"), "invalid_token"),
        (hs256({k: v for k, v in claims().items() if k != "sub"}), "invalid_token"),
        (hs256(claims(scope=5)), "invalid_token"),
    ],
    ids=["expired", "audience", "issuer", "signature", "alg-none", "no-subject", "scope-number"],
)
async def test_bad_tokens_are_unauthenticated(jwt_gateway, logs, token, cause):
    async with client_for(jwt_gateway, token) as client:
        error = await refused(client.query("hello", model="fast"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(error).metadata["cause"] == cause
    assert token not in error.details()
    logs.assert_no_secret(token)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_jwt_signed_with_a_key_from_the_jwks_file(tmp_path, keys, algorithm):
    if algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    else:
        private = ec.generate_private_key(ec.SECP256R1())
        public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    public_jwk.update(kid="k1", alg=algorithm, use="sig")
    other = ec.generate_private_key(ec.SECP256R1())  # signs nothing we accept
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [public_jwk]}))
    settings = auth_settings(
        keys, jwt={"issuer": ISSUER, "audience": "llmproxy", "jwks_file": str(jwks)}
    )
    good = jwt.encode(claims(), private, algorithm=algorithm, headers={"kid": "k1"})
    forged = jwt.encode(claims(), other, algorithm="ES256", headers={"kid": "k1"})
    # An HS256 token "signed" with the public key must not pass (algorithm confusion).
    confused = hmac_token(claims(), json.dumps(public_jwk).encode())
    async with running_app(settings) as app, client_for(app, good) as client:
        assert (await client.query("hello", model="fast")).done.model == "fast"
        for bad in (forged, confused):
            async with client_for(app, bad) as bad_client:
                error = await refused(bad_client.query("hello", model="fast"))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_disabled_auth_says_so_loudly(logs):
    async with running_client(mock_settings()) as (_, client):
        assert (await client.query("hello", model="fast")).done.model == "fast"
    warnings = [r for r in logs.records if r.levelname == "WARNING"]
    assert any("AUTHENTICATION IS DISABLED" in r.getMessage() for r in warnings)
    assert logs.access()[-1]["key_id"] == "anonymous"


async def test_keys_create_prints_a_key_the_gateway_accepts():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert await asyncio.to_thread(cli_main, ["keys", "create", "--id", "cli", "--json"]) == 0
    created = json.loads(out.getvalue())
    assert created["hash"].startswith("sha256:") and created["key"] not in created["hash"]
    settings = mock_settings(
        auth={"enabled": True, "api_keys": [{"id": "cli", "hash": created["hash"]}]}
    )
    async with running_app(settings) as app, client_for(app, created["key"]) as client:
        assert (await client.query("hello", model="fast")).done.model == "fast"


def test_grpcurl_is_installed():
    # The reflection test above shells out to it.
    import pathlib

    assert pathlib.Path(GRPCURL).exists()


def test_jwt_usage_scope_maps_to_the_principal():
    from llmproxy.server.config.security import JwtConfig
    from llmproxy.server.security.jwt_tokens import JwtVerifier

    verifier = JwtVerifier(JwtConfig(issuer=ISSUER, audience="llmproxy", hs256_secret=SECRET))
    now = time.time()
    admin = verifier.verify(hs256(claims(scope="rpc:GetUsage usage:all")), now)
    plain = verifier.verify(hs256(claims(sub="svc-other", scope="rpc:GetUsage")), now)
    assert admin.sees_all_usage and not plain.sees_all_usage
