"""The Anthropic adapter: pure wire functions, the adapter against a strict fake on loopback,
the official SDK against the same fake, and a gRPC Query end to end."""

from __future__ import annotations

import asyncio
import pathlib
import time

import anthropic
import grpc
import orjson
import pytest
from pydantic import SecretStr

from llmproxy.server.domain import (
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Parameters,
    Role,
    TextDelta,
)
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import anthropic as wire
from llmproxy.server.providers.anthropic import AnthropicProvider
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.http import HttpClientSettings, build_http_client
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.sse import SSEParser
from tests.fakes.anthropic_fake import (
    API_KEY,
    CACHE_READ_TOKENS,
    INPUT_TOKENS,
    MODELS,
    REPLY,
    anthropic_app,
)
from tests.support.running import running_client, settings_for
from tests.support.upstream import serve_upstream

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "anthropic"
TEXT = "".join(REPLY)


def chat(model: str = "ok", *messages: tuple[str, str], **params) -> ChatRequest:
    msgs = messages or (("user", "Say hello"),)
    return ChatRequest(
        model=model,
        messages=tuple(Message(Role(r), c) for r, c in msgs),
        params=Parameters(**params),
    )


@pytest.fixture
async def upstream():
    async with serve_upstream(anthropic_app()) as fake:
        yield fake


@pytest.fixture
async def http():
    client = build_http_client(HttpClientSettings(read_timeout_s=1.0))
    yield client
    await client.aclose()


def make(upstream, http, keys=(API_KEY,), **options) -> AnthropicProvider:
    settings = ProviderSettings(
        name="claude", type="anthropic", base_url=upstream.base_url, options=options
    )
    return AnthropicProvider(settings, http, KeyPool([SecretStr(k) for k in keys]))


async def collect(provider, request) -> tuple[list[TextDelta], Finish]:
    deltas: list[TextDelta] = []
    finish = None
    async for event in provider.stream(request):
        assert finish is None, "nothing may follow the Finish event"
        if isinstance(event, TextDelta):
            deltas.append(event)
        else:
            finish = event
    assert finish is not None
    return deltas, finish


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


@pytest.mark.parametrize("split", [1, 7, 64, 10_000])
def test_documented_stream_parses_whatever_the_read_boundaries(split):
    raw = (FIXTURES / "stream.sse").read_bytes()
    parser, state, texts = SSEParser(), wire.StreamState(), []
    for i in range(0, len(raw), split):
        for event in parser.feed(raw[i : i + split]):
            texts.append(wire.parse_event(event, state, provider="p"))
    assert "".join(texts) == "Hello!"
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
    provider = make(upstream, http)
    deltas, finish = await collect(
        provider,
        chat("claude-sonnet-4-5", ("system", "Be brief."), ("user", "Say hello"), temperature=0.2),
    )
    assert "".join(d.text for d in deltas) == TEXT
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
    provider = make(upstream, http, auth="x-api-key", api_version="2023-06-01")
    deltas, _ = await collect(provider, chat())
    assert "".join(d.text for d in deltas) == TEXT
    sent = upstream.requests[-1].headers
    assert sent["x-api-key"] == API_KEY and "authorization" not in sent
    assert sent["anthropic-version"] == "2023-06-01"


def test_options_are_checked_when_the_adapter_is_built():
    for options in ({"auth": "basic"}, {"default_max_tokens": "many"}, {"api_version": 2023}):
        settings = ProviderSettings(name="claude", type="anthropic", options=options)
        with pytest.raises(ValueError, match=r"providers\[claude\]\.options\."):
            AnthropicProvider(settings, None, KeyPool([]))


async def test_slow_stream_arrives_in_many_deltas(upstream, http):
    deltas, finish = await collect(make(upstream, http), chat("slow"))
    assert len(deltas) > 10
    assert "".join(d.text for d in deltas) == TEXT * 8
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
    _, finish = await collect(make(upstream, http), chat(model, **params))
    assert (finish.reason, finish.raw_reason) == (reason, raw)


async def test_thinking_is_not_answer_text_and_cached_tokens_count_as_input(upstream, http):
    provider = make(upstream, http)
    deltas, _ = await collect(provider, chat("thinking"))
    assert "".join(d.text for d in deltas) == TEXT
    _, finish = await collect(provider, chat("cached"))
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
    with pytest.raises(error_type) as caught:
        await collect(make(upstream, http), chat(model))
    assert type(caught.value) is error_type
    assert caught.value.status == status
    assert caught.value.provider == "claude"
    assert API_KEY not in str(caught.value)
    if model == "429":
        assert caught.value.retry_after == 2


async def test_caller_error_is_invalid_request_not_retried(upstream, http):
    with pytest.raises(UpstreamInvalidRequestError) as caught:
        await collect(make(upstream, http), chat(temperature=1.5))
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
    seen: list[str] = []
    with pytest.raises(error_type):
        async for event in make(upstream, http).stream(chat(model)):
            assert isinstance(event, TextDelta), "a broken stream must never Finish"
            seen.append(event.text)
    # Text read in the same network read as the failure may or may not have been yielded.
    assert TEXT.startswith("".join(seen))


async def test_hung_upstream_times_out_instead_of_hanging(upstream, http):
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeoutError):
        await collect(make(upstream, http), chat("hang"))
    assert time.perf_counter() - started < 3
    await asyncio.wait_for(upstream.event("disconnected:hang").wait(), 2)


async def test_refused_key_rests_and_the_call_fails_over_to_the_next_key(upstream, http):
    provider = make(upstream, http, keys=("sk-ant-wrong", API_KEY))
    for _ in range(2):
        deltas, _ = await collect(provider, chat())
        assert "".join(d.text for d in deltas) == TEXT
    # The first call was refused on key-0 and retried on key-1; key-0 then rests.
    used = [r.headers["authorization"] for r in upstream.requests]
    assert used == ["Bearer sk-ant-wrong", f"Bearer {API_KEY}", f"Bearer {API_KEY}"]
    assert provider.keys.cooling() == ["key-0"]


async def test_rate_limited_key_rests_for_retry_after(upstream, http):
    provider = make(upstream, http)
    with pytest.raises(UpstreamRateLimitedError):
        await collect(provider, chat("429"))
    assert provider.keys.cooling() == ["key-0"]
    assert len(upstream.requests) == 1  # no other key to fail over to


async def test_list_models(upstream, http):
    provider = make(upstream, http)
    assert await provider.list_models() == MODELS
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/v1/models", {"limit": "1000"})
    assert sent.headers["anthropic-version"] == wire.API_VERSION
    await provider.health_check()
    with pytest.raises(UpstreamAuthError):
        await make(upstream, http, keys=("sk-ant-wrong",)).list_models()


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


def anthropic_config(base_url: str, models: list[str]) -> dict:
    return {
        "providers": [
            {
                "name": "fake-anthropic",
                "type": "anthropic",
                "base_url": base_url,
                "api_keys": [API_KEY],
            }
        ],
        "models": [
            {
                "name": m,
                "provider": "fake-anthropic",
                "upstream_model": m,
                "task_types": ["generation"],
            }
            for m in models
        ],
    }


async def test_query_end_to_end(upstream):
    config = anthropic_config(upstream.base_url, ["ok", "529", "mid-stream-error"])
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query(
            messages=[("system", "Be brief."), ("user", "Say hello")], model="ok", max_tokens=50
        )
        assert result.text == TEXT
        meta = result.done.metadata
        assert (meta.input_tokens, meta.output_tokens) == (INPUT_TOKENS, len(REPLY))
        assert not result.done.usage.estimated
        assert result.done.provider == "fake-anthropic"
        sent = orjson.loads(upstream.requests[-1].body)
        assert sent["system"] == "Be brief." and sent["max_tokens"] == 50
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="529")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert API_KEY not in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.query("hi", model="mid-stream-error")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
