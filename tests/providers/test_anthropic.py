"""The Anthropic adapter: pure wire functions, the adapter against a strict fake on loopback,
the official SDK against the same fake, and a gRPC Query end to end."""

from __future__ import annotations

import dataclasses
import pathlib

import anthropic
import grpc
import orjson
import pytest

from llmproxy.server.domain import FinishReason, Parameters
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import anthropic as wire
from llmproxy.server.providers.anthropic import AnthropicProvider
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from tests.fakes.anthropic_fake import (
    API_KEY,
    CACHE_READ_TOKENS,
    INPUT_TOKENS,
    MODELS,
    REPLY,
    anthropic_app,
)
from tests.providers.chat_harness import (
    broken,
    chat,
    collect,
    exact_answer,
    fails_over,
    gateway_config,
    http_fixture,
    make,
    query_fails,
    refused,
    replay_sse,
    times_out,
    upstream_fixture,
)
from tests.support.running import running_client, settings_for

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "anthropic"
TEXT = "".join(REPLY)

upstream = upstream_fixture(anthropic_app)
http = http_fixture(read_timeout_s=1.0)


def provider(upstream, http, keys=(API_KEY,), **options):
    return make("anthropic", upstream.base_url, http, keys, name="claude", **options)


# --- pure functions -------------------------------------------------------------


def test_body_hoists_system_merges_same_role_turns_and_drops_seed():
    request = chat(
        "claude-sonnet-4-5",
        ("system", "Be brief."),
        ("user", "Hi"),
        ("user", "Are you there?"),
        ("assistant", "Yes."),
        ("system", "Answer in English."),
        ("user", "Good."),
        temperature=0.3,
        top_p=0.9,
        stop=("END",),
        seed=7,
    )
    assert wire.build_body(request) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi"},
                    {"type": "text", "text": "Are you there?"},
                ],
            },
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "stream": True,
        "system": "Be brief.\n\nAnswer in English.",
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
    }


def test_body_max_tokens_from_caller_or_configured_default():
    assert wire.build_body(chat(max_tokens=20))["max_tokens"] == 20
    assert wire.build_body(chat(), default_max_tokens=123)["max_tokens"] == 123
    capped = dataclasses.replace(chat(), max_output_tokens=8192)
    assert wire.build_body(capped, default_max_tokens=123)["max_tokens"] == 8192
    assert (
        wire.build_body(dataclasses.replace(capped, params=Parameters(max_tokens=7)))["max_tokens"]
        == 7
    )


@pytest.mark.parametrize("split", [1, 7, 64, 10_000])
def test_documented_stream_parses_whatever_the_read_boundaries(split):
    state = wire.StreamState()
    raw = (FIXTURES / "stream.sse").read_bytes()
    assert replay_sse(raw, split, wire.parse_event, state) == "Hello!"
    assert state.done
    finish = state.finish()
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "end_turn")
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (25, 15)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("pause_turn", FinishReason.OTHER),
        ("something_new", FinishReason.OTHER),
    ],
)
def test_stop_reasons(reason, expected):
    assert wire.StreamState(stop_reason=reason).finish().reason is expected


def test_error_bodies_map_to_typed_errors():
    overloaded = (FIXTURES / "error_529.json").read_bytes()
    error = wire.classify_error(529, {}, overloaded, provider="p")
    assert isinstance(error, UpstreamOverloadedError) and "Overloaded" in error.message
    assert wire.parse_error_body(overloaded) == ("overloaded_error", "Overloaded")
    limited = wire.classify_error(429, {"retry-after": "7"}, b"{}", provider="p")
    assert isinstance(limited, UpstreamRateLimitedError) and limited.retry_after == 7
    assert isinstance(wire.classify_error(401, {}, b"{}", provider="p"), UpstreamAuthError)
    too_long = orjson.dumps(
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "prompt is too long: 9 > 8"},
        }
    )
    assert isinstance(
        wire.classify_error(400, {}, too_long, provider="p"), UpstreamContextTooLongError
    )
    assert isinstance(
        wire.classify_error(502, {}, b"<html>", provider="p"), UpstreamUnavailableError
    )


# --- the adapter against the fake -------------------------------------------------


async def test_stream_sends_the_documented_request_and_reads_text_usage_finish(upstream, http):
    text, finish, _ = await collect(
        provider(upstream, http),
        chat("claude-sonnet-4-5", ("system", "Be brief."), ("user", "Say hello"), temperature=0.2),
    )
    assert text == TEXT
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "end_turn")
    assert finish.usage.input_tokens == INPUT_TOKENS
    assert finish.usage.output_tokens == len(REPLY)
    assert not finish.usage.estimated
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["anthropic-version"] == "2026-10-21"
    assert orjson.loads(sent.body) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "system": "Be brief.",
        "temperature": 0.2,
    }


async def test_documented_x_api_key_and_older_version_are_options(upstream, http):
    p = provider(upstream, http, auth="x-api-key", api_version="2023-06-01")
    text, _, _ = await collect(p, chat())
    assert text == TEXT
    sent = upstream.requests[-1].headers
    assert sent["x-api-key"] == API_KEY and "authorization" not in sent
    assert sent["anthropic-version"] == "2023-06-01"


def test_options_are_checked_when_the_adapter_is_built():
    for options in ({"auth": "basic"}, {"default_max_tokens": "many"}, {"api_version": 2023}):
        settings = ProviderSettings(name="claude", type="anthropic", options=options)
        with pytest.raises(ValueError, match=r"providers\[claude\]\.options\."):
            AnthropicProvider(settings, None, KeyPool([]))


async def test_slow_stream_arrives_in_many_deltas(upstream, http):
    text, finish, deltas = await collect(provider(upstream, http), chat("slow"))
    assert deltas > 10
    assert text == TEXT * 8
    assert finish.usage.output_tokens == len(REPLY) * 8


@pytest.mark.parametrize(
    ("model", "params", "reason", "raw"),
    [
        ("ok", {"max_tokens": 3}, FinishReason.LENGTH, "max_tokens"),
        ("ok", {"stop": ("zzz",)}, FinishReason.STOP, "stop_sequence"),
        ("refusal", {}, FinishReason.CONTENT_FILTER, "refusal"),
    ],
)
async def test_finish_reasons_from_the_wire(upstream, http, model, params, reason, raw):
    _, finish, _ = await collect(provider(upstream, http), chat(model, **params))
    assert (finish.reason, finish.raw_reason) == (reason, raw)


async def test_thinking_is_not_answer_text_and_cached_tokens_count_as_input(upstream, http):
    p = provider(upstream, http)
    text, _, _ = await collect(p, chat("thinking"))
    assert text == TEXT
    _, finish, _ = await collect(p, chat("cached"))
    assert finish.usage.input_tokens == INPUT_TOKENS + CACHE_READ_TOKENS
    assert finish.usage.cached_input_tokens == CACHE_READ_TOKENS


@pytest.mark.parametrize(
    ("model", "error_type", "status"),
    [
        ("429", UpstreamRateLimitedError, 429),
        ("500", UpstreamUnavailableError, 500),
        ("529", UpstreamOverloadedError, 529),
        ("401", UpstreamAuthError, 401),
        ("context", UpstreamContextTooLongError, 400),
    ],
)
async def test_http_errors_are_typed(upstream, http, model, error_type, status):
    p = provider(upstream, http)
    error = await refused(p, chat(model), error_type, status=status, secret=API_KEY)
    assert error.provider == "claude"
    if model == "429":
        assert error.retry_after == 2


async def test_caller_error_is_invalid_request_not_retried(upstream, http):
    with pytest.raises(UpstreamInvalidRequestError) as caught:
        await collect(provider(upstream, http), chat(temperature=1.5))
    assert "temperature" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error_type"),
    [
        ("mid-stream-error", UpstreamOverloadedError),
        ("truncated", UpstreamUnavailableError),
        ("reset", UpstreamUnavailableError),
        ("malformed", UpstreamProtocolError),
    ],
)
async def test_broken_streams_raise_never_finish(upstream, http, model, error_type):
    seen = await broken(provider(upstream, http), chat(model), error_type)
    # Text read in the same network read as the failure may or may not have been yielded.
    assert TEXT.startswith(seen)


async def test_hung_upstream_times_out_instead_of_hanging(upstream, http):
    await times_out(provider(upstream, http), upstream)


async def test_refused_key_rests_and_the_call_fails_over_to_the_next_key(upstream, http):
    # The first call was refused on key-0 and retried on key-1; key-0 then rests.
    p = provider(upstream, http, keys=("sk-ant-wrong", API_KEY))
    sent = ["Bearer sk-ant-wrong", f"Bearer {API_KEY}", f"Bearer {API_KEY}"]
    await fails_over(p, upstream, TEXT, "authorization", sent)


async def test_rate_limited_key_rests_for_retry_after(upstream, http):
    p = provider(upstream, http)
    with pytest.raises(UpstreamRateLimitedError):
        await collect(p, chat("429"))
    assert p.keys.cooling() == ["key-0"]
    assert len(upstream.requests) == 1  # no other key to fail over to


async def test_list_models(upstream, http):
    p = provider(upstream, http)
    assert await p.list_models() == MODELS
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/v1/models", {"limit": "1000"})
    assert sent.headers["anthropic-version"] == wire.API_VERSION
    await p.health_check()
    with pytest.raises(UpstreamAuthError):
        await provider(upstream, http, keys=("sk-ant-wrong",)).list_models()


# --- the official SDK against the same fake ----------------------------------------


def sdk(upstream, key: str = API_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=key, base_url=upstream.base_url, max_retries=0)


async def test_sdk_streams_text_and_usage_from_the_fake(upstream):
    client = sdk(upstream)
    async with client.messages.stream(
        model="ok",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello"}],
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        message = await stream.get_final_message()
    await client.close()
    assert text == TEXT
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (INPUT_TOKENS, len(REPLY))
    # The SDK's own request passed the fake's strict validation, and our adapter's
    # defaults are exactly what the current SDK sends.
    sent = upstream.requests[-1].headers
    assert sent["anthropic-version"] == wire.API_VERSION
    assert sent["authorization"] == f"Bearer {API_KEY}" and "x-api-key" not in sent


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("429", anthropic.RateLimitError),
        ("529", anthropic.OverloadedError),
        ("500", anthropic.InternalServerError),
        ("context", anthropic.BadRequestError),
    ],
)
async def test_sdk_raises_on_the_fakes_error_bodies(upstream, model, error):
    client = sdk(upstream)
    with pytest.raises(error) as caught:
        await client.messages.create(
            model=model, max_tokens=16, messages=[{"role": "user", "content": "hi"}], stream=True
        )
    await client.close()
    assert caught.value.body["error"]["type"] in {
        "rate_limit_error",
        "overloaded_error",
        "api_error",
        "invalid_request_error",
    }


async def test_sdk_raises_on_the_fakes_mid_stream_error_and_rejects_a_bad_key(upstream):
    client = sdk(upstream)
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        stream = await client.messages.create(
            model="mid-stream-error",
            max_tokens=16,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
        async for _ in stream:
            pass
    await client.close()
    bad = sdk(upstream, "sk-ant-wrong")
    with pytest.raises(anthropic.AuthenticationError):
        await bad.messages.create(
            model="ok", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    await bad.close()


async def test_sdk_lists_the_fakes_models(upstream):
    client = sdk(upstream)
    ids = [m.id async for m in client.models.list(limit=2)]
    await client.close()
    assert ids == MODELS


# --- end to end: gRPC Query -> server -> fake -----------------------------------------


async def test_query_end_to_end(upstream):
    config = gateway_config(
        {
            "name": "fake-anthropic",
            "type": "anthropic",
            "base_url": upstream.base_url,
            "api_keys": [API_KEY],
        },
        ["ok", "529", "mid-stream-error"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query(
            messages=[("system", "Be brief."), ("user", "Say hello")], model="ok", max_tokens=50
        )
        exact_answer(result, TEXT, INPUT_TOKENS, len(REPLY))
        assert result.done.provider == "fake-anthropic"
        sent = orjson.loads(upstream.requests[-1].body)
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 50
        await query_fails(client, "529", grpc.StatusCode.UNAVAILABLE, API_KEY)
        await query_fails(client, "mid-stream-error", grpc.StatusCode.UNAVAILABLE)
