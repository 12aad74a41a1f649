"""The Cohere v2 adapter: pure wire functions, the adapter against a strict fake on loopback,
the official cohere SDK against the same fake, and a gRPC Query end to end."""

from __future__ import annotations

import pathlib

import cohere
import grpc
import httpx
import orjson
import pytest
from cohere import errors as cohere_errors

from llmproxy.server.domain import FinishReason
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import cohere as wire
from tests.fakes.cohere_fake import API_KEY, BILLED_INPUT, MODELS, REPLY, cohere_app
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

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "cohere"
TEXT = "".join(REPLY)
NO_RETRY = {"max_retries": 0}

upstream = upstream_fixture(cohere_app)
http = http_fixture(read_timeout_s=1.0)


def provider(upstream, http, keys=(API_KEY,)):
    return make("cohere", upstream.base_url, http, keys, name="cohere")


# --- pure functions -------------------------------------------------------------


def test_body_keeps_system_turns_and_renames_parameters():
    request = chat(
        "command-a-03-2025",
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Again?"),
        temperature=0.3,
        max_tokens=50,
        top_p=0.9,
        stop=("END",),
        seed=7,
    )
    assert wire.build_body(request) == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Again?"},
        ],
        "stream": True,
        "max_tokens": 50,
        "temperature": 0.3,
        "p": 0.9,
        "stop_sequences": ["END"],
        "seed": 7,
    }
    # Cohere's p lives in [0.01, 0.99]; top_p 1.0 means "no cut", the nearest is 0.99.
    assert wire.build_body(chat(top_p=1.0))["p"] == 0.99


@pytest.mark.parametrize("split", [1, 9, 80, 10_000])
def test_documented_stream_parses_whatever_the_read_boundaries(split):
    state = wire.StreamState()
    raw = (FIXTURES / "stream.sse").read_bytes()
    assert replay_sse(raw, split, wire.parse_event, state) == "Hello world!"
    finish = state.finish()
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "COMPLETE")
    # Billed units, not the template-inflated token counts.
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (3, 3)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("COMPLETE", FinishReason.STOP),
        ("STOP_SEQUENCE", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("TOOL_CALL", FinishReason.TOOL_CALLS),
        ("SOMETHING_NEW", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw, expected):
    assert wire.StreamState(finish_raw=raw, done=True).finish().reason is expected


def test_usage_falls_back_to_tokens_without_billed_units():
    usage = wire.parse_usage({"tokens": {"input_tokens": 10, "output_tokens": 4}})
    assert (usage.input_tokens, usage.output_tokens) == (10, 4)
    assert wire.parse_usage({}) is None


def test_error_bodies_map_to_typed_errors():
    limited = wire.classify_error(
        429, {"retry-after": "3"}, (FIXTURES / "error_429.json").read_bytes(), provider="p"
    )
    assert isinstance(limited, UpstreamRateLimitedError) and limited.retry_after == 3
    assert "Trial key" in limited.message
    assert isinstance(wire.classify_error(401, {}, b"{}", provider="p"), UpstreamAuthError)
    invalid_token = wire.classify_error(498, {}, b'{"message":"invalid api token"}', provider="p")
    assert isinstance(invalid_token, UpstreamAuthError) and invalid_token.status == 498
    cancelled = wire.classify_error(499, {}, b"{}", provider="p")
    assert isinstance(cancelled, UpstreamUnavailableError)
    too_long = (
        b'{"message":"too many tokens: total number of tokens in the prompt cannot exceed 9"}'
    )
    assert isinstance(
        wire.classify_error(400, {}, too_long, provider="p"), UpstreamContextTooLongError
    )


def test_mid_stream_failures_raise():
    state = wire.StreamState()
    end = '{"type":"message-end","delta":{"finish_reason":"TIMEOUT"}}'
    with pytest.raises(UpstreamTimeoutError):
        wire.parse_event(wire.SSEEvent("message-end", end), state, provider="p")
    with pytest.raises(UpstreamUnavailableError, match="overloaded"):
        wire.parse_event(wire.SSEEvent("message", '{"message":"overloaded"}'), state, provider="p")


# --- the adapter against the fake -------------------------------------------------


async def test_stream_sends_the_documented_request_and_reads_text_usage_finish(upstream, http):
    text, finish, _ = await collect(
        provider(upstream, http),
        chat("command-a-03-2025", ("system", "Be brief."), ("user", "Say hello"), temperature=0.2),
    )
    assert text == TEXT
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "COMPLETE")
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (BILLED_INPUT, len(REPLY))
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v2/chat")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert orjson.loads(sent.body) == {
        "model": "command-a-03-2025",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello"},
        ],
        "stream": True,
        "temperature": 0.2,
    }


async def test_many_deltas_thinking_and_finish_reasons(upstream, http):
    p = provider(upstream, http)
    text, finish, deltas = await collect(p, chat("slow"))
    assert deltas > 10 and text == TEXT * 8
    assert finish.usage.output_tokens == len(REPLY) * 8
    text, _, _ = await collect(p, chat("thinking"))
    assert text == TEXT
    _, finish, _ = await collect(p, chat(max_tokens=3))
    assert (finish.reason, finish.raw_reason) == (FinishReason.LENGTH, "MAX_TOKENS")
    _, finish, _ = await collect(p, chat(stop=("zzz",)))
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "STOP_SEQUENCE")


@pytest.mark.parametrize(
    ("model", "error_type", "status"),
    [
        ("429", UpstreamRateLimitedError, 429),
        ("500", UpstreamUnavailableError, 500),
        ("401", UpstreamAuthError, 401),
        ("498", UpstreamAuthError, 498),
        ("context", UpstreamContextTooLongError, 400),
    ],
)
async def test_http_errors_are_typed(upstream, http, model, error_type, status):
    p = provider(upstream, http)
    error = await refused(p, chat(model), error_type, status=status, secret=API_KEY)
    assert error.provider == "cohere"
    if model == "429":
        assert error.retry_after == 2


async def test_caller_error_is_invalid_request(upstream, http):
    with pytest.raises(UpstreamInvalidRequestError) as caught:
        await collect(provider(upstream, http), chat(stop=tuple("abcdef")))
    assert "stop_sequences" in caught.value.message


@pytest.mark.parametrize(
    ("model", "error_type"),
    [
        ("mid-stream-error", UpstreamUnavailableError),
        ("truncated", UpstreamUnavailableError),
        ("reset", UpstreamUnavailableError),
        ("malformed", UpstreamProtocolError),
    ],
)
async def test_broken_streams_raise_never_finish(upstream, http, model, error_type):
    seen = await broken(provider(upstream, http), chat(model), error_type)
    assert TEXT.startswith(seen)


async def test_hung_upstream_times_out_instead_of_hanging(upstream, http):
    await times_out(provider(upstream, http), upstream)


async def test_refused_key_rests_and_the_call_fails_over_to_the_next_key(upstream, http):
    p = provider(upstream, http, keys=("co-wrong", API_KEY))
    sent = ["Bearer co-wrong", f"Bearer {API_KEY}", f"Bearer {API_KEY}"]
    await fails_over(p, upstream, TEXT, "authorization", sent)


async def test_rate_limited_key_rests(upstream, http):
    p = provider(upstream, http)
    with pytest.raises(UpstreamRateLimitedError):
        await collect(p, chat("429"))
    assert p.keys.cooling() == ["key-0"]


async def test_list_models_asks_for_chat_models(upstream, http):
    p = provider(upstream, http)
    assert await p.list_models() == [m for m in MODELS if not m.startswith("embed")]
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/v1/models", {"endpoint": "chat", "page_size": "1000"})
    with pytest.raises(UpstreamAuthError):
        await provider(upstream, http, keys=("co-wrong",)).list_models()


# --- the official SDK against the same fake ----------------------------------------


@pytest.fixture
async def sdk_http():
    client = httpx.AsyncClient()
    yield client
    await client.aclose()


@pytest.fixture
def sdk(upstream, sdk_http):
    def build(key: str = API_KEY) -> cohere.AsyncClientV2:
        return cohere.AsyncClientV2(api_key=key, base_url=upstream.base_url, httpx_client=sdk_http)

    return build


async def test_sdk_streams_text_and_usage_from_the_fake(upstream, sdk):
    client = sdk()
    events = [
        e
        async for e in client.chat_stream(
            model="ok",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=50,
            temperature=0.2,
            p=0.5,
            seed=3,
            request_options=NO_RETRY,
        )
    ]
    text = "".join(e.delta.message.content.text for e in events if e.type == "content-delta")
    assert text == TEXT
    end = events[-1]
    assert end.type == "message-end" and end.delta.finish_reason == "COMPLETE"
    assert end.delta.usage.billed_units.input_tokens == BILLED_INPUT
    assert end.delta.usage.billed_units.output_tokens == len(REPLY)
    # The SDK's own request passed the fake's strict validation, on our path and auth.
    sent = upstream.requests[-1]
    assert sent.path == "/v2/chat" and sent.headers["authorization"] == f"Bearer {API_KEY}"


async def test_sdk_reads_the_fakes_mid_stream_error(upstream, sdk):
    client = sdk()
    events = [
        e
        async for e in client.chat_stream(
            model="mid-stream-error",
            messages=[{"role": "user", "content": "hi"}],
            request_options=NO_RETRY,
        )
    ]
    assert events[-1].type == "message-end" and events[-1].delta.finish_reason == "ERROR"


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("429", cohere_errors.TooManyRequestsError),
        ("500", cohere_errors.InternalServerError),
        ("401", cohere_errors.UnauthorizedError),
        ("498", cohere_errors.InvalidTokenError),
        ("context", cohere_errors.BadRequestError),
    ],
)
async def test_sdk_raises_on_the_fakes_error_bodies(upstream, sdk, model, error):
    client = sdk()
    with pytest.raises(error) as caught:
        async for _ in client.chat_stream(
            model=model, messages=[{"role": "user", "content": "hi"}], request_options=NO_RETRY
        ):
            pass
    assert caught.value.body["message"]


async def test_sdk_lists_the_fakes_models(upstream, sdk):
    listed = await sdk().models.list(endpoint="chat", request_options=NO_RETRY)
    assert [m.name for m in listed.models] == [m for m in MODELS if not m.startswith("embed")]


# --- end to end: gRPC Query -> server -> fake -----------------------------------------


async def test_query_end_to_end(upstream):
    config = gateway_config(
        {
            "name": "fake-cohere",
            "type": "cohere",
            "base_url": upstream.base_url,
            "api_keys": [API_KEY],
        },
        ["ok", "401", "truncated"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query(
            messages=[("system", "Be brief."), ("user", "Say hello")], model="ok", max_tokens=50
        )
        exact_answer(result, TEXT, BILLED_INPUT, len(REPLY))
        sent = orjson.loads(upstream.requests[-1].body)
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert sent["max_tokens"] == 50
        await query_fails(client, "401", grpc.StatusCode.FAILED_PRECONDITION, API_KEY)
        await query_fails(client, "truncated", grpc.StatusCode.UNAVAILABLE)
