"""The OpenAI adapter: pure wire functions on real-format fixtures, the adapter against a
strict fake on loopback, the official `openai` SDK against the same fake, and a gRPC Query
end to end."""

from __future__ import annotations

import pathlib
import time

import grpc
import httpx
import openai
import orjson
import pytest
from aiohttp import web

from llmproxy.server.domain import FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import openai as wire
from llmproxy.server.providers.openai_compat import ChunkDecoder, parse_error_body
from tests.fakes.openai_fake import API_KEY, MODELS, PROMPT_TOKENS, REPLY, openai_app
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
from tests.support.upstream import serve_upstream

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "openai"
TEXT = "".join(REPLY)


upstream = upstream_fixture(openai_app)
http = http_fixture()


def provider(upstream, http, **options):
    return make("openai", upstream.base_url + "/v1", http, [API_KEY], name="oai", **options)


# --- pure functions ------------------------------------------------------------------


def test_fixture_stream_decodes_identically_at_every_split():
    raw = (FIXTURES / "stream_usage.sse").read_bytes()
    for cut in range(len(raw) + 1):
        decoder = ChunkDecoder("oai", lambda e: AssertionError(e))
        text = decoder.feed(raw[:cut]) + decoder.feed(raw[cut:])
        assert text == "Bonjour à tous — Ελλάδα!"
        finish = decoder.finish()
        assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "stop")
        assert finish.usage == Usage(19, 7, 0)


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("gpt-4o-mini", False),
        ("gpt-4.1", False),
        ("o1", True),
        ("o1-mini", True),
        ("o3-mini-2025-01-31", True),
        ("o4-mini", True),
        ("gpt-5", True),
        ("gpt-5-mini", True),
        ("ft:o4-mini-2025-04-16:acme::abc", True),
        ("omni-moderation-latest", False),
    ],
)
def test_reasoning_models_are_recognised_by_name(model, reasoning):
    assert wire.is_reasoning_model(model) is reasoning


def test_reasoning_body_renames_max_tokens_and_system_role(http):
    p = make("openai", "http://unused/v1", http)
    request = chat("o3-mini", ("system", "Be brief."), ("user", "Hi"), max_tokens=64, seed=3)
    assert p.build_body(request) == {
        "model": "o3-mini",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 64,
        "seed": 3,
    }
    plain = p.build_body(chat("gpt-4o-mini", ("system", "S"), ("user", "Hi"), max_tokens=64))
    assert plain["max_tokens"] == 64 and plain["messages"][0]["role"] == "system"
    forced = make("openai", "http://unused/v1", http, reasoning=True)
    assert "max_completion_tokens" in forced.build_body(chat("my-alias", max_tokens=5))


def test_bad_option_fails_at_start_naming_it(http):
    with pytest.raises(ValueError, match=r"providers\[p\]\.options\.reasoning"):
        make("openai", "", http, reasoning="yes")
    with pytest.raises(ValueError, match=r"options\.include_usage"):
        make("openai", "", http, include_usage="no")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("6m0s", 360.0), ("1h2m3s", 3723.0), ("soon", None)],
)
def test_parse_duration(text, seconds):
    assert wire.parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("fixture", "status", "headers", "cls", "retry_after", "retryable"),
    [
        ("error_context_length.json", 400, {}, UpstreamContextTooLongError, None, False),
        ("error_insufficient_quota.json", 429, {}, UpstreamRateLimitedError, None, False),
        ("error_rate_limit.json", 429, {}, UpstreamRateLimitedError, 0.247, True),
        ("error_rate_limit.json", 429, {"retry-after": "3"}, UpstreamRateLimitedError, 3, True),
    ],
)
def test_error_bodies_map_to_typed_errors(
    http, fixture, status, headers, cls, retry_after, retryable
):
    p = make("openai", "http://unused/v1", http, name="oai")
    body = (FIXTURES / fixture).read_bytes()
    error = p.classify_error(status, httpx.Headers(headers), body)
    assert type(error) is cls
    assert error.retryable is retryable
    assert error.retry_after == pytest.approx(retry_after) if retry_after else True
    assert error.status == status and error.provider == "oai"
    assert parse_error_body(body).message[:20] in error.message


# --- the adapter against the fake -------------------------------------------------------


async def test_stream_text_usage_and_exact_request(upstream, http):
    p = provider(upstream, http, organization="org-42", project="proj_7")
    request = chat(
        "gpt-4o-mini",
        ("system", "Be brief."),
        ("user", "Hi"),
        temperature=0.2,
        top_p=0.9,
        stop=("END",),
        seed=7,
    )
    text, finish, deltas = await collect(p, request)
    assert text == TEXT
    assert 1 <= deltas <= len(REPLY)
    assert finish.reason == FinishReason.STOP and finish.raw_reason == "stop"
    assert finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["openai-organization"] == "org-42"
    assert sent.headers["openai-project"] == "proj_7"
    assert sent.headers["accept"] == "text/event-stream"
    assert orjson.loads(sent.body) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
    }


async def test_reasoning_model_gets_max_completion_tokens(upstream, http):
    # The fake refuses `max_tokens` for o-series models exactly as OpenAI does.
    text, finish, _ = await collect(provider(upstream, http), chat("o3-mini", max_tokens=4))
    assert text == TEXT and finish.reason == FinishReason.LENGTH
    assert orjson.loads(upstream.requests[-1].body)["max_completion_tokens"] == 4


async def test_length_and_content_filter_finish_reasons(upstream, http):
    _, finish, _ = await collect(provider(upstream, http), chat("ok", max_tokens=3))
    assert (finish.reason, finish.raw_reason) == (FinishReason.LENGTH, "length")
    _, finish, _ = await collect(provider(upstream, http), chat("content-filter"))
    assert finish.reason == FinishReason.CONTENT_FILTER


async def test_no_usage_chunk_means_no_usage(upstream, http):
    _, finish, _ = await collect(provider(upstream, http), chat("no-usage"))
    assert finish.usage is None


async def test_trace_headers_are_forwarded(upstream, http):
    request = chat("ok")
    request = type(request)(
        model="ok", messages=request.messages, headers=(("traceparent", "00-ab-cd-01"),)
    )
    await collect(provider(upstream, http), request)
    assert upstream.requests[-1].headers["traceparent"] == "00-ab-cd-01"


@pytest.mark.parametrize(
    ("model", "cls", "status", "retry_after"),
    [
        ("429", UpstreamRateLimitedError, 429, 2.0),
        ("rate-hint", UpstreamRateLimitedError, 429, 1.5),
        ("quota", UpstreamRateLimitedError, 429, None),
        ("500", UpstreamUnavailableError, 500, None),
        ("503", UpstreamUnavailableError, 503, None),
        ("bad-gateway", UpstreamUnavailableError, 502, None),
        ("401", UpstreamAuthError, 401, None),
        ("context", UpstreamContextTooLongError, 400, None),
    ],
)
async def test_errors_before_the_stream(upstream, http, model, cls, status, retry_after):
    error = await refused(provider(upstream, http), chat(model), cls, status=status, secret=API_KEY)
    assert error.retry_after == retry_after
    if model == "quota":
        assert not error.retryable
        assert error.metadata["upstream_code"] == "insufficient_quota"


async def test_unsupported_parameter_is_invalid_request(upstream, http):
    p = provider(upstream, http, reasoning=False)
    with pytest.raises(UpstreamInvalidRequestError, match="max_completion_tokens"):
        await collect(p, chat("o3-mini", max_tokens=4))


@pytest.mark.parametrize(
    ("model", "cls"),
    [
        ("mid-stream-error", UpstreamUnavailableError),
        ("truncated", UpstreamUnavailableError),
        ("malformed", UpstreamProtocolError),
        ("reset", UpstreamUnavailableError),
        ("stall", UpstreamTimeoutError),
    ],
)
async def test_errors_after_text_arrived(upstream, http, model, cls):
    started = time.perf_counter()
    received = await broken(provider(upstream, http), chat(model), cls)
    # A stream that stops without its terminator ends in an error, bounded by the read timeout.
    assert time.perf_counter() - started < 2.0
    # Text sent before the failure is delivered, unless the failure came in the same read.
    expected = "".join(REPLY[: {"malformed": 2, "truncated": len(REPLY)}.get(model, 3)])
    assert expected.startswith(received)
    if model in ("truncated", "reset", "stall"):
        assert received == expected


async def test_list_models(upstream, http):
    assert await provider(upstream, http).list_models() == MODELS
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"


async def test_connection_is_reused_across_calls(http):
    # Reading on past [DONE] returns the connection to the pool instead of dropping it.
    peers: set[int] = set()

    @web.middleware
    async def note_peer(request, handler):
        peers.add(request.transport.get_extra_info("peername")[1])
        return await handler(request)

    app = openai_app()
    app.middlewares.append(note_peer)
    async with serve_upstream(app) as fake:
        p = provider(fake, http)
        for _ in range(5):
            await collect(p, chat("ok"))
    assert len(peers) == 1


# --- keep the fake honest: the official SDK against it --------------------------------


@pytest.fixture
def sdk(upstream):
    return openai.AsyncOpenAI(base_url=upstream.base_url + "/v1", api_key=API_KEY, max_retries=0)


async def test_sdk_parses_the_fake_stream(sdk, upstream):
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=50,
    )
    text, usage, finish = [], None, None
    async for ev in stream:
        for choice in ev.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = ev.usage or usage
    assert "".join(text) == TEXT and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY))
    assert usage.prompt_tokens_details.cached_tokens == 0


async def test_sdk_sends_what_the_fake_accepts_for_reasoning_models(sdk):
    stream = await sdk.chat.completions.create(
        model="o3-mini",
        messages=[{"role": "developer", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
        stream=True,
        max_completion_tokens=100,
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == TEXT


@pytest.mark.parametrize(
    ("model", "exc", "code"),
    [
        ("429", openai.RateLimitError, "rate_limit_exceeded"),
        ("quota", openai.RateLimitError, "insufficient_quota"),
        ("401", openai.AuthenticationError, "invalid_api_key"),
        ("context", openai.BadRequestError, "context_length_exceeded"),
        ("500", openai.InternalServerError, None),
    ],
)
async def test_sdk_raises_on_the_fake_errors(sdk, model, exc, code):
    with pytest.raises(exc) as caught:
        await sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    assert caught.value.code == code


async def test_sdk_raises_on_mid_stream_error(sdk):
    stream = await sdk.chat.completions.create(
        model="mid-stream-error", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    with pytest.raises(openai.APIError, match="error while processing"):
        async for _ in stream:
            pass


async def test_sdk_lists_the_fake_models(sdk):
    assert [m.id async for m in sdk.models.list()] == MODELS


# --- end to end ----------------------------------------------------------------------


async def test_query_end_to_end_through_the_gateway(upstream):
    config = gateway_config(
        {
            "name": "openai",
            "type": "openai",
            "base_url": upstream.base_url + "/v1",
            "api_keys": [API_KEY],
            "options": {"organization": "org-42"},
        },
        ["gpt-4o-mini", "o3-mini", "quota"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query("Say hello", model="o3-mini", max_tokens=50)
        exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
        assert result.done.provider == "openai"
        await query_fails(client, "quota", grpc.StatusCode.RESOURCE_EXHAUSTED, API_KEY)
    sent = orjson.loads(upstream.requests[0].body)
    assert sent["max_completion_tokens"] == 50 and "max_tokens" not in sent
    assert upstream.requests[0].headers["openai-organization"] == "org-42"
