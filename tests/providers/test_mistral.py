"""The Mistral adapter: its field names and error shapes on real-format fixtures, the adapter
against a strict fake on loopback, the official `mistralai` SDK against the same fake, and a
gRPC Query end to end."""

from __future__ import annotations

import pathlib

import grpc
import httpx
import orjson
import pytest
from mistralai.client import Mistral
from mistralai.client import errors as mistral_errors

from llmproxy.server.domain import FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamContextTooLongError,
    UpstreamInvalidRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import mistral as wire
from tests.fakes.mistral_fake import MISTRAL_KEY, MODELS, PROMPT_TOKENS, REPLY, mistral_app
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

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "mistral"
TEXT = "".join(REPLY)


upstream = upstream_fixture(mistral_app)
http = http_fixture()


def provider(upstream, http, keys=(MISTRAL_KEY,), **options):
    return make("mistral", upstream.base_url, http, keys, name="mistral", **options)


# --- pure functions ------------------------------------------------------------------


def test_body_uses_mistral_field_names(http):
    p = make("mistral", "https://api.mistral.ai/v1", http, safe_prompt=True)
    assert p.url(chat()) == "https://api.mistral.ai/v1/chat/completions"
    request = chat("mistral-small-latest", ("system", "S"), ("user", "Hi"), seed=5, max_tokens=7)
    assert p.build_body(request) == {
        "model": "mistral-small-latest",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "max_tokens": 7,
        "random_seed": 5,
        "safe_prompt": True,
    }
    assert make("mistral", "", http).url(chat()) == "https://api.mistral.ai/v1/chat/completions"


def test_stream_fixture_usage_comes_with_the_finish():
    raw = (FIXTURES / "stream.sse").read_bytes()
    for cut in range(0, len(raw) + 1, 7):
        decoder = wire.MistralDecoder("mistral", lambda e: AssertionError(e))
        assert decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) == "Le meilleur fromage ?"
        finish = decoder.finish()
        assert finish.reason == FinishReason.STOP and finish.usage == Usage(10, 4, 0)


@pytest.mark.parametrize(
    ("fixture", "status", "cls", "needle"),
    [
        ("error_422_extra_forbidden.json", 422, UpstreamInvalidRequestError,
         "body.max_completion_tokens: Extra inputs are not permitted"),
        ("error_422_detail.json", 422, UpstreamInvalidRequestError, "body.model: Field required"),
        ("error_422_string_message.json", 422, UpstreamInvalidRequestError,
         "body.frequency_penalty: Extra inputs"),
        ("error_429.json", 429, UpstreamRateLimitedError, "Rate limit exceeded"),
    ],
)  # fmt: skip
def test_error_shapes(http, fixture, status, cls, needle):
    p = make("mistral", "", http, name="mistral")
    error = p.classify_error(status, httpx.Headers(), (FIXTURES / fixture).read_bytes())
    assert type(error) is cls and needle in error.message


def test_chunk_lists_keep_only_text():
    content = [
        {"type": "thinking", "thinking": [{"type": "text", "text": "secret"}]},
        {"type": "text", "text": "answer"},
    ]
    assert wire.text_of(content) == "answer"
    assert wire.text_of(None) == ""


# --- the adapter against the fake -------------------------------------------------------


async def test_stream_text_usage_and_exact_request(upstream, http):
    p = provider(upstream, http, safe_prompt=True)
    request = chat("mistral-small-latest", temperature=0.3, seed=42, stop=("\n\n",))
    text, finish, _ = await collect(p, request)
    assert text == TEXT and finish.reason == FinishReason.STOP
    assert finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)
    sent = upstream.requests[-1]
    assert (sent.path, sent.headers["authorization"]) == (
        "/v1/chat/completions",
        f"Bearer {MISTRAL_KEY}",
    )
    assert orjson.loads(sent.body) == {
        "model": "mistral-small-latest",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "temperature": 0.3,
        "stop": ["\n\n"],
        "random_seed": 42,
        "safe_prompt": True,
    }


async def test_generic_body_would_be_refused_with_a_clear_422(upstream, http):
    # The OpenAI-compatible adapter sends `seed` and `stream_options`: Mistral says which.
    generic = make("openai_compatible", upstream.base_url + "/v1", http, [MISTRAL_KEY])
    with pytest.raises(UpstreamInvalidRequestError) as caught:
        await collect(generic, chat("mistral-small-latest", seed=1))
    assert caught.value.status == 422
    assert "body.seed: Extra inputs are not permitted" in caught.value.message


async def test_length_finish_and_chunked_content(upstream, http):
    _, finish, _ = await collect(
        provider(upstream, http), chat("mistral-small-latest", max_tokens=2)
    )
    assert finish.reason == FinishReason.LENGTH
    text, _, _ = await collect(provider(upstream, http), chat("magistral"))
    assert text == TEXT  # the thinking chunk is not part of the answer


@pytest.mark.parametrize(
    ("model", "cls", "status"),
    [
        ("429", UpstreamRateLimitedError, 429),
        ("gateway-429", UpstreamRateLimitedError, 429),
        ("500", UpstreamUnavailableError, 500),
        ("context", UpstreamContextTooLongError, 400),
    ],
)
async def test_errors_before_the_stream(upstream, http, model, cls, status):
    await refused(provider(upstream, http), chat(model), cls, status=status)


async def test_wrong_key(upstream, http):
    p = provider(upstream, http, keys=("bad-mistral-key",))
    await refused(p, chat("x"), UpstreamAuthError, status=401, secret="bad-mistral-key")


@pytest.mark.parametrize(
    ("model", "cls"),
    [
        ("mid-stream-error", UpstreamUnavailableError),
        ("truncated", UpstreamUnavailableError),
        ("malformed", UpstreamProtocolError),
    ],
)
async def test_errors_after_the_stream_started(upstream, http, model, cls):
    received = await broken(provider(upstream, http), chat(model), cls)
    assert TEXT.startswith(received)


async def test_list_models(upstream, http):
    assert await provider(upstream, http).list_models() == MODELS
    assert upstream.requests[-1].path == "/v1/models"


# --- keep the fake honest: the official SDK against it --------------------------------


@pytest.fixture
def sdk(upstream):
    return Mistral(api_key=MISTRAL_KEY, server_url=upstream.base_url)


async def test_sdk_parses_the_fake_stream(sdk, upstream):
    stream = await sdk.chat.stream_async(
        model="mistral-small-latest",
        messages=[{"role": "user", "content": "Hi"}],
        random_seed=3,
        safe_prompt=True,
    )
    text, usage, finish = [], None, None
    async for event in stream:
        choice = event.data.choices[0]
        text.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
        usage = event.data.usage or usage
    assert "".join(text) == TEXT and finish == "stop"
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY))
    # What the SDK sends is what our adapter sends.
    assert set(orjson.loads(upstream.requests[-1].body)) == {
        "model",
        "messages",
        "stream",
        "random_seed",
        "safe_prompt",
    }


async def test_sdk_raises_on_the_fake_errors(sdk):
    with pytest.raises(mistral_errors.SDKError) as caught:
        await sdk.chat.stream_async(model="429", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 429 and "rate_limited" in caught.value.body
    bad = Mistral(api_key="nope", server_url=sdk.sdk_configuration.server_url)
    with pytest.raises(mistral_errors.SDKError) as caught:
        await bad.chat.stream_async(model="x", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 401


async def test_sdk_lists_the_fake_models(sdk):
    listing = await sdk.models.list_async()
    assert [m.id for m in listing.data] == MODELS


# --- end to end ----------------------------------------------------------------------


async def test_query_end_to_end_through_the_gateway(upstream):
    config = gateway_config(
        {
            "name": "mistral",
            "type": "mistral",
            "base_url": upstream.base_url,
            "api_keys": [MISTRAL_KEY],
        },
        ["mistral-small-latest", "429"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query("Say hello", model="mistral-small-latest", seed=11)
        exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
        await query_fails(client, "429", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert orjson.loads(upstream.requests[0].body)["random_seed"] == 11
