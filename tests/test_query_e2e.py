"""Query end to end: gRPC client -> server -> fake OpenAI upstream on loopback, and back."""

from __future__ import annotations

import asyncio
import time

import grpc
import orjson
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmproxy.client.client import build_query_request
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.conftest import openai_config
from tests.fakes.openai_fake import PROMPT_TOKENS, REPLY
from tests.support.running import running_client, settings_for

MODELS = [
    "ok",
    "slow",
    "hang",
    "429",
    "500",
    "401",
    "context",
    "mid-stream-error",
    "truncated",
    "malformed",
    "no-usage",
]


def details(error: grpc.aio.AioRpcError) -> dict[str, object]:
    status = rpc_status.from_call(error)
    out: dict[str, object] = {}
    for any_ in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RequestInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.RetryInfo,
        ):
            if any_.Is(cls.DESCRIPTOR):
                msg = cls()
                any_.Unpack(msg)
                out[cls.__name__] = msg
    return out


@pytest.fixture
async def gateway(openai_upstream):
    async with running_client(settings_for(openai_config(openai_upstream.base_url, MODELS))) as (
        app,
        client,
    ):
        yield app, client, openai_upstream


async def test_stream_order_text_and_usage(gateway):
    _, client, upstream = gateway
    events = [
        e
        async for e in client.stream(
            build_query_request(
                "Say hello", model="ok", temperature=0.2, max_tokens=50, request_id="req-1"
            )
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert set(kinds[1:-1]) == {"delta"}
    assert all(e.request_id == "req-1" for e in events)
    assert "".join(e.delta.text for e in events if e.HasField("delta")) == "".join(REPLY)
    done = events[-1].done
    assert (done.model, done.provider) == ("ok", "fake-openai")
    assert done.metadata.input_tokens == PROMPT_TOKENS
    assert done.metadata.output_tokens == len(REPLY)
    assert done.metadata.total_tokens == PROMPT_TOKENS + len(REPLY)
    assert done.metadata.finish_reason == pb.FINISH_REASON_STOP
    assert done.metadata.request_id == "req-1"
    assert not done.usage.estimated
    assert [a.model for a in done.attempts] == ["ok"]
    # The upstream received exactly the documented request body.
    sent = orjson.loads(upstream.requests[-1].body)
    assert sent == {
        "model": "ok",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "max_tokens": 50,
    }


async def test_request_id_generated_when_absent(gateway):
    _, client, _ = gateway
    result = await client.query("hi", model="ok")
    assert len(result.request_id) == 32
    assert result.done.metadata.request_id == result.request_id


async def test_multi_turn_messages_reach_upstream(gateway):
    _, client, upstream = gateway
    await client.query(
        messages=[
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "And now?"),
        ],
        model="ok",
    )
    sent = orjson.loads(upstream.requests[-1].body)
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert "temperature" not in sent and "max_tokens" not in sent


async def test_usage_estimated_with_tokenizer_when_upstream_reports_none(gateway):
    _, client, _ = gateway
    result = await client.query("Say hello", model="no-usage")
    assert result.done.usage.estimated
    assert result.done.metadata.output_tokens > 0
    assert result.done.metadata.input_tokens > 0


@pytest.mark.parametrize(
    ("model", "code", "reason"),
    [
        ("429", grpc.StatusCode.RESOURCE_EXHAUSTED, "UPSTREAM_RATE_LIMITED"),
        ("500", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("401", grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH_FAILED"),
        ("context", grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_TOO_LONG"),
        ("mid-stream-error", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("truncated", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        ("malformed", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_PROTOCOL_ERROR"),
    ],
)
async def test_upstream_errors_map_to_status_codes(gateway, model, code, reason):
    _, client, _ = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model=model, request_id="rid-err")
    assert caught.value.code() == code
    info = details(caught.value)
    assert info["ErrorInfo"].reason == reason
    assert info["ErrorInfo"].domain == "llmproxy"
    assert info["RequestInfo"].request_id == "rid-err"
    assert "sk-test" not in caught.value.details()
    if model == "429":
        assert info["RetryInfo"].retry_delay.seconds == 2


async def test_unknown_model_is_not_found_listing_known_models(gateway):
    _, client, upstream = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model="gpt-99")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ok" in caught.value.details() and "slow" in caught.value.details()
    assert details(caught.value)["ErrorInfo"].reason == "MODEL_NOT_FOUND"
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 3.0}, "parameters.temperature"),
        ({"max_tokens": 0}, "parameters.max_tokens"),
        ({"top_p": 0.0}, "parameters.top_p"),
        ({"stop": [""]}, "parameters.stop"),
    ],
)
async def test_bad_parameters_are_invalid_argument_with_field_violations(gateway, kwargs, field):
    _, client, upstream = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model="ok", **kwargs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details(caught.value)["BadRequest"].field_violations
    assert [v.field for v in violations] == [field]
    assert upstream.requests == []


async def test_empty_request_is_invalid_argument(gateway):
    _, client, _ = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("", model="ok")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)["BadRequest"].field_violations[0].field == "query"


async def test_cancellation_reaches_the_upstream(gateway):
    _, client, upstream = gateway
    call = client.stream(build_query_request("hi", model="slow"))
    seen = 0
    async for event in call:
        if event.HasField("delta"):
            seen += 1
            if seen == 3:
                call.cancel()
                break
    await asyncio.wait_for(upstream.event("disconnected:slow").wait(), 2)
    assert upstream.disconnects == 1


async def test_deadline_cancels_the_upstream_call(gateway):
    _, client, upstream = gateway
    started = time.perf_counter()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.query("hi", model="hang", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.perf_counter() - started < 1.5
    await asyncio.wait_for(upstream.event("disconnected:hang").wait(), 2)
