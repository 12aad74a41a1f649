"""AWS Bedrock ConverseStream: event-stream framing (checked against botocore's own decoder),
SigV4 signatures verified by the fake as AWS would, Bedrock's errors, boto3 against the same
fake, and a gRPC Query end to end."""

from __future__ import annotations

import asyncio
import pathlib
import struct
import uuid
import zlib

import boto3
import botocore.exceptions
import grpc
import orjson
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer

from llmproxy.server.domain import FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import bedrock as wire
from llmproxy.server.providers.eventstream import EventStreamDecoder, EventStreamError
from tests.fakes.bedrock_fake import (
    ACCESS_KEY,
    API_KEY,
    CACHE_READ,
    CREDENTIAL,
    INPUT_TOKENS,
    MODEL,
    MODELS,
    REGION,
    REPLY,
    SECRET_KEY,
    bedrock_app,
    encode_message,
)
from tests.providers.chat_harness import (
    broken,
    chat,
    collect,
    exact_answer,
    gateway_config,
    http_fixture,
    make,
    query_fails,
    refused,
    upstream_fixture,
)
from tests.support.running import running_client, settings_for

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "bedrock"
TEXT = "".join(REPLY)


upstream = upstream_fixture(bedrock_app)
http = http_fixture()


def provider(upstream, http, keys=(CREDENTIAL,), **options):
    options = {"region": REGION, "control_url": upstream.base_url, **options}
    return make("bedrock", upstream.base_url, http, keys, name="bedrock", **options)


# --- event-stream framing -----------------------------------------------------------


def test_fixture_decodes_like_botocore_at_every_split():
    raw = (FIXTURES / "converse_stream.bin").read_bytes()
    reference = EventStreamBuffer()
    reference.add_data(raw)
    expected = [(m.headers, m.payload) for m in reference]
    for cut in range(0, len(raw) + 1, 3):
        decoder = EventStreamDecoder()
        assert decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) == expected
        assert not decoder.pending


def test_every_header_type_decodes_like_botocore():
    def header(name: str, kind: int, value: bytes) -> bytes:
        return bytes([len(name)]) + name.encode() + bytes([kind]) + value

    ident = uuid.uuid4()
    headers = b"".join(
        [
            header("t", 0, b""),
            header("f", 1, b""),
            header("b", 2, struct.pack(">b", -3)),
            header("s", 3, struct.pack(">h", 300)),
            header("i", 4, struct.pack(">i", -70000)),
            header("l", 5, struct.pack(">q", 2**40)),
            header("by", 6, struct.pack(">H", 3) + b"\x00\x01\x02"),
            header("st", 7, struct.pack(">H", 5) + "héllo".encode()[:5]),
            header("ts", 8, struct.pack(">q", 1700000000000)),
            header("u", 9, ident.bytes),
        ]
    )
    prelude = struct.pack(">II", 12 + len(headers) + 2 + 4, len(headers))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + b"{}"
    raw = head + struct.pack(">I", zlib.crc32(head))
    ours = EventStreamDecoder().feed(raw)[0][0]
    reference = EventStreamBuffer()
    reference.add_data(raw)
    theirs = next(iter(reference)).headers
    assert ours["u"] == ident and theirs["u"] == ident.bytes
    ours["u"] = ident.bytes
    assert ours == theirs


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda m: m[:8] + b"\x00\x00\x00\x00" + m[12:], "prelude checksum"),
        (lambda m: m[:-1] + bytes([m[-1] ^ 1]), "message checksum"),
        (lambda m: m[:20] + bytes([m[20] ^ 1]) + m[21:], "message checksum"),
    ],
)
def test_corruption_is_detected(corrupt, match):
    message = encode_message({":message-type": "event"}, b'{"a": 1}')
    with pytest.raises(EventStreamError, match=match):
        EventStreamDecoder().feed(corrupt(message))


def test_absurd_length_is_a_framing_error():
    prelude = struct.pack(">II", 2**31, 0)
    with pytest.raises(EventStreamError, match="length"):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


# --- pure request building -------------------------------------------------------------


def test_body_separates_system_merges_turns_and_renames_parameters():
    request = chat(
        MODEL,
        ("system", "Be brief."),
        ("user", "Hi"),
        ("user", "Still there?"),
        ("assistant", "Yes"),
        ("user", "Good"),
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=("END",),
        seed=4,
    )
    assert wire.build_body(request) == {
        "messages": [
            {"role": "user", "content": [{"text": "Hi"}, {"text": "Still there?"}]},
            {"role": "assistant", "content": [{"text": "Yes"}]},
            {"role": "user", "content": [{"text": "Good"}]},
        ],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {
            "maxTokens": 64,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
        },
    }


def test_urls_default_to_the_region(http):
    p = make("bedrock", "", http, region="ap-south-1")
    assert p.url(chat(MODEL)) == (
        "https://bedrock-runtime.ap-south-1.amazonaws.com/model/"
        "anthropic.claude-3-haiku-20240307-v1:0/converse-stream"
    )
    arn = "arn:aws:bedrock:ap-south-1:123456789012:inference-profile/apac.amazon.nova-micro"
    assert "/model/arn:aws:bedrock:ap-south-1:123456789012:inference-profile%2Fapac." in p.url(
        chat(arn)
    )
    assert p.models_url() == "https://bedrock.ap-south-1.amazonaws.com/foundation-models"


# --- the adapter against the fake (which verifies every signature) ----------------------


async def test_stream_text_usage_and_signed_request(upstream, http):
    text, finish, _ = await collect(provider(upstream, http), chat(MODEL, temperature=0.5))
    assert text == TEXT
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "end_turn")
    assert finish.usage == Usage(INPUT_TOKENS, len(REPLY), CACHE_READ)
    sent = upstream.requests[-1]
    assert sent.path == f"/model/{MODEL}/converse-stream"
    assert sent.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert f"/{REGION}/bedrock/aws4_request" in sent.headers["authorization"]
    assert sent.headers["accept"] == "application/vnd.amazon.eventstream"
    assert SECRET_KEY not in str(sent.headers)
    assert orjson.loads(sent.body) == {
        "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
        "inferenceConfig": {"temperature": 0.5},
    }


async def test_session_token_and_api_key_auth(upstream, http):
    with_token = provider(upstream, http, keys=(CREDENTIAL + ":FwoGZXIvYXdzEXAMPLETOKEN",))
    assert (await collect(with_token, chat(MODEL)))[0] == TEXT
    assert upstream.requests[-1].headers["x-amz-security-token"] == "FwoGZXIvYXdzEXAMPLETOKEN"
    bearer = provider(upstream, http, keys=(API_KEY,))
    assert (await collect(bearer, chat(MODEL)))[0] == TEXT
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    "key", [f"{ACCESS_KEY}:wrongSecret", "AKIAUNKNOWN000000000:x", "not-a-bedrock-key"]
)
async def test_bad_credentials_are_auth_errors_without_the_secret(upstream, http, key):
    p = provider(upstream, http, keys=(key,))
    error = await refused(p, chat(MODEL), UpstreamAuthError, status=403, secret=key)
    assert error.metadata["upstream_code"] in (
        "InvalidSignatureException",
        "UnrecognizedClientException",
    )


async def test_signing_a_path_other_than_the_one_sent_is_refused(upstream, http):
    # A client that signs "v1%3A0" while it sends "v1:0" (or the reverse) is refused by
    # AWS, and so by the fake: the transport must send the path exactly as it was signed.
    class SignsDecodedPath(wire.BedrockProvider):
        def authorize(self, headers, secret, method, url, content) -> None:
            super().authorize(headers, secret, method, url.replace("v1:0", "v1%3A0"), content)

    p = provider(upstream, http)
    bad = SignsDecodedPath(p.settings, http, p.keys)
    assert "v1:0/" in bad.url(chat(MODEL))
    with pytest.raises(UpstreamAuthError) as caught:
        await collect(bad, chat(MODEL))
    assert caught.value.metadata["upstream_code"] == "InvalidSignatureException"


async def test_key_pool_fails_over_to_a_good_credential(upstream, http):
    p = provider(upstream, http, keys=(f"{ACCESS_KEY}:wrongSecret", CREDENTIAL))
    for _ in range(3):
        assert (await collect(p, chat(MODEL)))[0] == TEXT
    assert p.keys.cooling() == ["key-0"]


async def test_finish_reasons(upstream, http):
    _, finish, _ = await collect(provider(upstream, http), chat(MODEL, max_tokens=3))
    assert (finish.reason, finish.raw_reason) == (FinishReason.LENGTH, "max_tokens")
    _, finish, _ = await collect(provider(upstream, http), chat("guardrail"))
    assert (finish.reason, finish.raw_reason) == (
        FinishReason.CONTENT_FILTER,
        "guardrail_intervened",
    )


@pytest.mark.parametrize(
    ("model", "cls", "status"),
    [
        ("throttle", UpstreamRateLimitedError, 429),
        ("not-ready", UpstreamOverloadedError, 429),
        ("too-long", UpstreamContextTooLongError, 400),
        ("500", UpstreamUnavailableError, 500),
    ],
)
async def test_errors_before_the_stream(upstream, http, model, cls, status):
    await refused(provider(upstream, http), chat(model), cls, status=status)


@pytest.mark.parametrize(
    ("model", "cls"),
    [
        ("stream-throttle", UpstreamRateLimitedError),
        ("truncated", UpstreamUnavailableError),
        ("corrupt", UpstreamProtocolError),
    ],
)
async def test_errors_after_the_stream_started(upstream, http, model, cls):
    received = await broken(provider(upstream, http), chat(model), cls)
    assert TEXT.startswith(received)


async def test_list_models_is_signed_too(upstream, http):
    assert await provider(upstream, http).list_models() == MODELS
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/foundation-models")


# --- keep the fake honest: boto3 against it ------------------------------------------


def boto(service: str, upstream, secret: str = SECRET_KEY):
    return boto3.client(
        service,
        endpoint_url=upstream.base_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


async def test_boto3_is_accepted_and_parses_the_stream(upstream):
    client = boto("bedrock-runtime", upstream)

    def converse():
        response = client.converse_stream(
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": "Hi"}]}],
            inferenceConfig={"maxTokens": 100},
        )
        return list(response["stream"])

    events = await asyncio.to_thread(converse)
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e
    )
    assert text == TEXT
    assert events[-2] == {"messageStop": {"stopReason": "end_turn"}}
    usage = events[-1]["metadata"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"]) == (INPUT_TOKENS, len(REPLY))
    listing = await asyncio.to_thread(boto("bedrock", upstream).list_foundation_models)
    assert [m["modelId"] for m in listing["modelSummaries"]] == MODELS


async def test_boto3_sees_the_fake_errors(upstream):
    client = boto("bedrock-runtime", upstream)

    def call(model: str):
        response = client.converse_stream(
            modelId=model, messages=[{"role": "user", "content": [{"text": "Hi"}]}]
        )
        return list(response["stream"])

    with pytest.raises(client.exceptions.ThrottlingException):
        await asyncio.to_thread(call, "throttle")
    with pytest.raises(client.exceptions.ValidationException, match="too long"):
        await asyncio.to_thread(call, "too-long")
    with pytest.raises(botocore.exceptions.EventStreamError, match="throttlingException"):
        await asyncio.to_thread(call, "stream-throttle")
    wrong = boto("bedrock-runtime", upstream, secret="wrong")
    with pytest.raises(botocore.exceptions.ClientError, match="InvalidSignatureException"):
        await asyncio.to_thread(
            wrong.converse_stream,
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": "Hi"}]}],
        )


# --- end to end ----------------------------------------------------------------------


async def test_query_end_to_end_through_the_gateway(upstream):
    config = gateway_config(
        {
            "name": "bedrock",
            "type": "bedrock",
            "base_url": upstream.base_url,
            "api_keys": [CREDENTIAL],
            "options": {"region": REGION, "control_url": upstream.base_url},
        },
        [MODEL, "throttle"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query("Say hello", model=MODEL, max_tokens=50)
        exact_answer(result, TEXT, INPUT_TOKENS, len(REPLY))
        await query_fails(client, "throttle", grpc.StatusCode.RESOURCE_EXHAUSTED)
        status = await client.status(refresh=True)
        assert all(m.available for m in status.models)
