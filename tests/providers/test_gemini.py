"""The Gemini adapter: pure wire functions, the adapter against a strict fake on loopback,
the official google-genai SDK against the same fake, and a gRPC Query end to end."""

from __future__ import annotations

import pathlib

import grpc
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from llmproxy.server.domain import FinishReason
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamOverloadedError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import gemini as wire
from tests.fakes.gemini_fake import (
    API_KEY,
    MODELS,
    PROMPT_TOKENS,
    REPLY,
    THOUGHT_TOKENS,
    gemini_app,
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

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "gemini"
TEXT = "".join(REPLY)

upstream = upstream_fixture(gemini_app)
http = http_fixture(read_timeout_s=1.0)


def provider(upstream, http, keys=(API_KEY,), **options):
    return make("gemini", upstream.base_url, http, keys, name="gemini", **options)


# --- pure functions -------------------------------------------------------------


def test_body_uses_system_instruction_model_role_merged_turns_and_generation_config():
    request = chat(
        "gemini-2.5-flash",
        ("system", "Be brief."),
        ("user", "Hi"),
        ("user", "Are you there?"),
        ("assistant", "Yes."),
        ("user", "Good."),
        temperature=0.3,
        max_tokens=50,
        top_p=0.9,
        stop=("END",),
        seed=7,
    )
    assert wire.build_body(request) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}, {"text": "Are you there?"}]},
            {"role": "model", "parts": [{"text": "Yes."}]},
            {"role": "user", "parts": [{"text": "Good."}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.3,
            "maxOutputTokens": 50,
            "topP": 0.9,
            "stopSequences": ["END"],
            "seed": 7,
        },
    }
    assert "generationConfig" not in wire.build_body(chat())
    assert wire.model_path("gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert wire.model_path("tunedModels/mine") == "tunedModels/mine"


@pytest.mark.parametrize("split", [1, 13, 100, 10_000])
def test_documented_stream_parses_whatever_the_read_boundaries(split):
    state = wire.StreamState()
    raw = (FIXTURES / "stream.sse").read_bytes()
    assert replay_sse(raw, split, wire.parse_event, state) == "The sky is blue."
    finish = state.finish()
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "STOP")
    # Output counts thinking tokens (billed as output); cached tokens are part of the input.
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (8, 5 + 28)
    assert finish.usage.cached_input_tokens == 2


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", FinishReason.OTHER),
        ("FINISH_REASON_UNSPECIFIED", FinishReason.OTHER),
    ],
)
def test_finish_reasons(raw, expected):
    assert wire.StreamState(finish_raw=raw, done=True).finish().reason is expected


def test_error_bodies_map_to_typed_errors():
    limited = wire.classify_error(429, {}, (FIXTURES / "error_429.json").read_bytes(), provider="p")
    assert isinstance(limited, UpstreamRateLimitedError) and limited.retry_after == 37
    bad_key = (FIXTURES / "error_api_key_invalid.json").read_bytes()
    auth = wire.classify_error(400, {}, bad_key, provider="p")
    assert isinstance(auth, UpstreamAuthError) and "API_KEY_INVALID" in auth.message
    too_long = orjson.dumps(
        {
            "error": {
                "code": 400,
                "message": "The input token count (9) exceeds the maximum number of tokens"
                " allowed (8).",
                "status": "INVALID_ARGUMENT",
            }
        }
    )
    assert isinstance(
        wire.classify_error(400, {}, too_long, provider="p"), UpstreamContextTooLongError
    )
    listed = b"[" + too_long + b"]"  # the streaming endpoint may wrap the error in a list
    assert isinstance(
        wire.classify_error(400, {}, listed, provider="p"), UpstreamContextTooLongError
    )
    assert isinstance(
        wire.classify_error(502, {}, b"<html>", provider="p"), UpstreamUnavailableError
    )


# --- the adapter against the fake -------------------------------------------------


async def test_stream_sends_the_documented_request_and_reads_text_usage_finish(upstream, http):
    text, finish, _ = await collect(
        provider(upstream, http),
        chat("gemini-2.5-flash", ("system", "Be brief."), ("user", "Say hello"), temperature=0.2),
    )
    assert text == TEXT
    assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "STOP")
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (PROMPT_TOKENS, len(REPLY))
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/models/gemini-2.5-flash:streamGenerateContent")
    assert sent.query == {"alt": "sse"}
    assert sent.headers["x-goog-api-key"] == API_KEY and "authorization" not in sent.headers
    assert orjson.loads(sent.body) == {
        "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2},
    }


async def test_v1beta_is_an_option(upstream, http):
    text, _, _ = await collect(provider(upstream, http, api_version="v1beta"), chat())
    assert text == TEXT
    assert upstream.requests[-1].path == "/v1beta/models/ok:streamGenerateContent"


async def test_usage_only_at_the_end_and_many_chunks(upstream, http):
    p = provider(upstream, http)
    _, finish, _ = await collect(p, chat("usage-at-end"))
    assert (finish.usage.input_tokens, finish.usage.output_tokens) == (PROMPT_TOKENS, len(REPLY))
    text, finish, deltas = await collect(p, chat("slow"))
    assert deltas > 10 and text == TEXT * 8
    assert finish.usage.output_tokens == len(REPLY) * 8


async def test_thought_parts_are_not_answer_text_but_their_tokens_are_output(upstream, http):
    text, finish, _ = await collect(provider(upstream, http), chat("thinking"))
    assert text == TEXT
    assert finish.usage.output_tokens == len(REPLY) + THOUGHT_TOKENS


async def test_safety_stop_and_blocked_prompt_end_as_content_filter(upstream, http):
    p = provider(upstream, http)
    text, finish, _ = await collect(p, chat("safety"))
    assert text == "".join(REPLY[:3])
    assert (finish.reason, finish.raw_reason) == (FinishReason.CONTENT_FILTER, "SAFETY")
    _, finish, deltas = await collect(p, chat("blocked"))
    assert deltas == 0
    assert (finish.reason, finish.raw_reason) == (
        FinishReason.CONTENT_FILTER,
        "prompt_blocked:SAFETY",
    )
    assert finish.usage.input_tokens == PROMPT_TOKENS and finish.usage.output_tokens == 0


async def test_max_tokens_is_length(upstream, http):
    _, finish, _ = await collect(provider(upstream, http), chat(max_tokens=3))
    assert (finish.reason, finish.raw_reason) == (FinishReason.LENGTH, "MAX_TOKENS")


@pytest.mark.parametrize(
    ("model", "error_type", "status"),
    [
        ("429", UpstreamRateLimitedError, 429),
        ("500", UpstreamUnavailableError, 500),
        ("503", UpstreamOverloadedError, 503),
        ("401", UpstreamAuthError, 400),
        ("context", UpstreamContextTooLongError, 400),
    ],
)
async def test_http_errors_are_typed(upstream, http, model, error_type, status):
    p = provider(upstream, http)
    error = await refused(p, chat(model), error_type, status=status, secret=API_KEY)
    assert error.provider == "gemini"
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


async def test_bad_key_rests_and_the_call_fails_over_to_the_next_key(upstream, http):
    # Gemini refuses a bad key with a 400, which still rests the key.
    p = provider(upstream, http, keys=("AIza-wrong", API_KEY))
    await fails_over(p, upstream, TEXT, "x-goog-api-key", ["AIza-wrong", API_KEY, API_KEY])


async def test_rate_limited_key_rests_for_the_retry_info_delay(upstream, http):
    p = provider(upstream, http)
    with pytest.raises(UpstreamRateLimitedError):
        await collect(p, chat("429"))
    assert p.keys.cooling() == ["key-0"]


async def test_list_models_keeps_chat_models(upstream, http):
    p = provider(upstream, http)
    assert await p.list_models() == [m for m in MODELS if "embedding" not in m]
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/v1/models", {"pageSize": "1000"})
    with pytest.raises(UpstreamAuthError):
        await provider(upstream, http, keys=("AIza-wrong",)).list_models()


# --- the official SDK against the same fake ----------------------------------------


def sdk(upstream, key: str = API_KEY) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=upstream.base_url))


async def test_sdk_streams_text_and_usage_from_the_fake(upstream):
    client = sdk(upstream)
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(
            model="ok",
            contents="Say hello",
            config=types.GenerateContentConfig(
                system_instruction="Be brief.", max_output_tokens=50, temperature=0.2, seed=3
            ),
        )
    ]
    assert "".join(c.text or "" for c in chunks) == TEXT
    last = chunks[-1]
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata.prompt_token_count == PROMPT_TOKENS
    assert last.usage_metadata.candidates_token_count == len(REPLY)
    # The SDK's own request passed the fake's strict validation, on the path version
    # and auth header our adapter uses by default.
    sent = upstream.requests[-1]
    assert sent.path == f"/{wire.API_VERSION}/models/ok:streamGenerateContent"
    assert sent.headers["x-goog-api-key"] == API_KEY
    whole = await client.aio.models.generate_content(model="ok", contents="Say hello")
    assert whole.text == TEXT and whole.usage_metadata.prompt_token_count == PROMPT_TOKENS
    await client.aio.aclose()


async def test_sdk_sees_the_safety_block(upstream):
    client = sdk(upstream)
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(
            model="blocked", contents="hi"
        )
    ]
    assert chunks[-1].prompt_feedback.block_reason == types.BlockedReason.SAFETY
    await client.aio.aclose()


@pytest.mark.parametrize(
    ("model", "error", "code"),
    [
        ("429", genai_errors.ClientError, 429),
        ("500", genai_errors.ServerError, 500),
        ("503", genai_errors.ServerError, 503),
        ("401", genai_errors.ClientError, 400),
    ],
)
async def test_sdk_raises_on_the_fakes_error_bodies(upstream, model, error, code):
    client = sdk(upstream)
    with pytest.raises(error) as caught:
        async for _ in await client.aio.models.generate_content_stream(model=model, contents="hi"):
            pass
    await client.aio.aclose()
    assert caught.value.code == code


async def test_sdk_raises_on_the_fakes_mid_stream_error(upstream):
    client = sdk(upstream)
    with pytest.raises(genai_errors.ServerError):
        async for _ in await client.aio.models.generate_content_stream(
            model="mid-stream-error", contents="hi"
        ):
            pass
    await client.aio.aclose()


async def test_sdk_lists_the_fakes_models(upstream):
    client = sdk(upstream)
    pager = await client.aio.models.list(config={"page_size": 2})
    names = [m.name async for m in pager]
    await client.aio.aclose()
    assert names == [f"models/{m}" for m in MODELS]


# --- end to end: gRPC Query -> server -> fake -----------------------------------------


async def test_query_end_to_end(upstream):
    config = gateway_config(
        {
            "name": "fake-gemini",
            "type": "gemini",
            "base_url": upstream.base_url,
            "api_keys": [API_KEY],
        },
        ["ok", "blocked", "429"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query(
            messages=[("system", "Be brief."), ("user", "Say hello")], model="ok", max_tokens=50
        )
        exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
        sent = orjson.loads(upstream.requests[-1].body)
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert sent["generationConfig"] == {"maxOutputTokens": 50}
        blocked = await client.query("hi", model="blocked")
        assert blocked.text == ""
        assert blocked.done.metadata.provider_finish_reason == "prompt_blocked:SAFETY"
        await query_fails(client, "429", grpc.StatusCode.RESOURCE_EXHAUSTED, API_KEY)
