"""Context windows through the real gateway: a request that fits nowhere is INVALID_ARGUMENT
before any upstream call; in a group, only the candidates that can hold it are tried."""

from __future__ import annotations

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.fakes.openai_fake import API_KEY
from tests.support.running import running_client, settings_for

LONG_PROMPT = " ".join(["word"] * 50)  # 50 tokens, + 7 of chat framing


def details(error: grpc.aio.AioRpcError) -> dict:
    out = {}
    for any_ in rpc_status.from_call(error).details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[cls.__name__] = msg
    return out


@pytest.fixture
async def gateway(openai_upstream):
    config = {
        "providers": [
            {
                "name": "fake-openai",
                "type": "openai_compatible",
                "base_url": openai_upstream.base_url + "/v1",
                "api_keys": [API_KEY],
            }
        ],
        "models": [
            {
                "name": "small",
                "provider": "fake-openai",
                "upstream_model": "ok",
                "context_window": 40,
            },
            {
                "name": "large",
                "provider": "fake-openai",
                "upstream_model": "ok",
                "context_window": 1000,
            },
        ],
        "groups": [{"name": "g", "members": [{"model": "small"}, {"model": "large"}]}],
    }
    async with running_client(settings_for(config)) as (_, client):
        yield client, openai_upstream


async def test_too_long_for_the_model_is_invalid_argument_with_the_numbers(gateway):
    client, upstream = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query(LONG_PROMPT, model="small", max_tokens=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = details(error)
    assert info["ErrorInfo"].reason == "CONTEXT_TOO_LONG"
    assert dict(info["ErrorInfo"].metadata) == {
        "prompt_tokens": "57",
        "max_tokens": "10",
        "context_window": "40",
        "model": "small",
    }
    assert info["BadRequest"].field_violations[0].field == "messages"
    assert "57 tokens" in error.details() and "small (40)" in error.details()
    assert upstream.requests == []


async def test_max_tokens_counts_against_the_window(gateway):
    client, upstream = gateway
    await client.query("hi", model="small", max_tokens=30)  # 8 + 30 <= 40
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model="small", max_tokens=33)  # 8 + 33 > 40
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(upstream.requests) == 1


async def test_a_group_routes_to_the_member_that_can_hold_the_request(gateway):
    client, upstream = gateway
    short = await client.query("hi", model="g")
    assert short.done.model == "small"
    long = await client.query(LONG_PROMPT, model="g", max_tokens=10)
    assert long.done.model == "large"
    assert [a.model for a in long.done.attempts] == ["large"]  # "small" was never tried
    assert len(upstream.requests) == 2
    assert orjson.loads(upstream.requests[-1].body)["max_tokens"] == 10
