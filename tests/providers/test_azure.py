"""The Azure OpenAI adapter: URL, api-version and api-key, Azure's content filter as a finish
reason, the official `openai.AsyncAzureOpenAI` against the same fake, and a gRPC Query."""

from __future__ import annotations

import pathlib

import grpc
import openai
import orjson
import pytest

from llmproxy.server.domain import FinishReason, Usage
from llmproxy.server.errors import (
    UpstreamAuthError,
    UpstreamInvalidRequestError,
    UpstreamProtocolError,
    UpstreamRateLimitedError,
    UpstreamUnavailableError,
)
from llmproxy.server.providers import azure_openai as wire
from llmproxy.server.providers.openai_compat import ChunkDecoder
from llmproxy.v1 import llmproxy_pb2 as pb
from tests.fakes.azure_fake import AZURE_KEY, MODELS, azure_app
from tests.fakes.openai_fake import PROMPT_TOKENS, REPLY
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

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "azure"
TEXT = "".join(REPLY)


upstream = upstream_fixture(azure_app)
http = http_fixture()


def provider(upstream, http, keys=(AZURE_KEY,), **options):
    return make("azure_openai", upstream.base_url, http, keys, name="azure", **options)


# --- pure functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint", ["https://res.openai.azure.com", "https://res.openai.azure.com/openai/"]
)
def test_url_has_deployment_and_api_version(http, endpoint):
    p = make("azure_openai", endpoint, http, api_version="2025-04-01-preview")
    assert p.url(chat("my deployment")) == (
        "https://res.openai.azure.com/openai/deployments/my%20deployment/chat/completions"
        "?api-version=2025-04-01-preview"
    )
    assert p.auth_headers("k") == {"api-key": "k"}
    default = make("azure_openai", endpoint, http)
    assert default.url(chat("d")).endswith("?api-version=" + wire.DEFAULT_API_VERSION)


def test_endpoint_is_required(http):
    with pytest.raises(ValueError, match=r"providers\[p\]\.base_url is required"):
        make("azure_openai", "", http)


def test_body_has_no_model_and_reasoning_deployments_use_max_completion_tokens(http):
    p = make("azure_openai", "https://res.openai.azure.com", http)
    assert p.build_body(chat("gpt-4o-mini", max_tokens=9)) == {
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 9,
    }
    assert p.build_body(chat("o3-mini", max_tokens=9))["max_completion_tokens"] == 9
    named = make("azure_openai", "https://r", http, reasoning=True, include_usage=False)
    assert named.build_body(chat("prod-reasoner", max_tokens=9)) == {
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "max_completion_tokens": 9,
    }


def test_content_filter_error_body_is_recognised():
    body = (FIXTURES / "error_content_filter.json").read_bytes()
    assert wire.is_content_filtered(400, body)
    assert not wire.is_content_filtered(500, body)
    assert not wire.is_content_filtered(400, b'{"error": {"code": "BadRequest"}}')


@pytest.mark.parametrize(
    "body", [b'{"error": "content_filter"}', b'{"error": {"innererror": "content_filter"}}']
)
def test_an_odd_content_filter_body_is_not_an_exception(body):
    assert not wire.is_content_filtered(400, body)


def test_filtered_stream_fixture_ends_with_content_filter():
    raw = (FIXTURES / "stream_filtered.sse").read_bytes()
    decoder = ChunkDecoder("azure", lambda e: AssertionError(e))
    assert decoder.feed(raw) == "Once upon"
    finish = decoder.finish()
    assert (finish.reason, finish.raw_reason) == (FinishReason.CONTENT_FILTER, "content_filter")


# --- the adapter against the fake -------------------------------------------------------


async def test_stream_text_usage_and_exact_request(upstream, http):
    text, finish, _ = await collect(provider(upstream, http), chat("gpt-4o-mini", temperature=0))
    assert text == TEXT and finish.reason == FinishReason.STOP
    assert finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert sent.query == {"api-version": wire.DEFAULT_API_VERSION}
    assert sent.headers["api-key"] == AZURE_KEY and "authorization" not in sent.headers
    assert orjson.loads(sent.body) == {
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }


async def test_older_api_version_needs_include_usage_off(upstream, http):
    old = provider(upstream, http, api_version="2024-06-01")
    with pytest.raises(UpstreamInvalidRequestError, match="stream_options"):
        await collect(old, chat("gpt-4o-mini"))
    quiet = provider(upstream, http, api_version="2024-06-01", include_usage=False)
    text, finish, _ = await collect(quiet, chat("gpt-4o-mini"))
    assert text == TEXT and finish.usage is None


async def test_reasoning_deployment(upstream, http):
    text, _, _ = await collect(provider(upstream, http), chat("o3-mini", max_tokens=100))
    assert text == TEXT
    assert orjson.loads(upstream.requests[-1].body)["max_completion_tokens"] == 100


async def test_content_filter_mid_answer_is_a_finish_reason(upstream, http):
    text, finish, _ = await collect(provider(upstream, http), chat("content-filter"))
    assert text == "".join(REPLY[:3])
    assert finish.reason == FinishReason.CONTENT_FILTER


async def test_filtered_prompt_is_a_finish_reason_not_an_error(upstream, http):
    text, finish, deltas = await collect(provider(upstream, http), chat("prompt-filter"))
    assert (text, deltas) == ("", 0)
    assert (finish.reason, finish.raw_reason) == (FinishReason.CONTENT_FILTER, "content_filter")


@pytest.mark.parametrize(
    ("deployment", "cls", "status", "retry_after"),
    [
        ("429", UpstreamRateLimitedError, 429, 6.0),
        ("500", UpstreamUnavailableError, 500, None),
        ("no-such-deployment", UpstreamInvalidRequestError, 404, None),
    ],
)
async def test_errors_before_the_stream(upstream, http, deployment, cls, status, retry_after):
    error = await refused(provider(upstream, http), chat(deployment), cls, status=status)
    assert error.retry_after == retry_after
    if deployment == "no-such-deployment":
        assert "deployment for this resource does not exist" in error.message


async def test_wrong_key_is_an_auth_error_without_the_key(upstream, http):
    p = provider(upstream, http, keys=("wrong-key-123",))
    await refused(p, chat("gpt-4o-mini"), UpstreamAuthError, status=401, secret="wrong-key-123")


@pytest.mark.parametrize(
    ("deployment", "cls"),
    [
        ("mid-stream-error", UpstreamUnavailableError),
        ("truncated", UpstreamUnavailableError),
        ("malformed", UpstreamProtocolError),
    ],
)
async def test_errors_after_the_stream_started(upstream, http, deployment, cls):
    received = await broken(provider(upstream, http), chat(deployment), cls)
    assert TEXT.startswith(received)


async def test_list_models(upstream, http):
    assert await provider(upstream, http).list_models() == MODELS
    sent = upstream.requests[-1]
    assert (sent.path, sent.query) == ("/openai/models", {"api-version": wire.DEFAULT_API_VERSION})


# --- keep the fake honest: the official SDK against it --------------------------------


@pytest.fixture
def sdk(upstream):
    return openai.AsyncAzureOpenAI(
        azure_endpoint=upstream.base_url,
        api_key=AZURE_KEY,
        api_version=wire.DEFAULT_API_VERSION,
        max_retries=0,
    )


async def test_sdk_parses_the_fake_stream(sdk, upstream):
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, filtered = [], None, None
    async for ev in stream:
        for choice in ev.choices:
            text.append(choice.delta.content or "" if choice.delta else "")
        usage = ev.usage or usage
        filtered = getattr(ev, "prompt_filter_results", None) or filtered
    assert "".join(text) == TEXT
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY))
    assert filtered[0]["prompt_index"] == 0
    assert upstream.requests[-1].headers["api-key"] == AZURE_KEY


async def test_sdk_sees_the_content_filter(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(
            model="prompt-filter", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    assert caught.value.code == "content_filter"
    stream = await sdk.chat.completions.create(
        model="content-filter", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    reasons = [c.choices[0].finish_reason async for c in stream if c.choices]
    assert reasons[-1] == "content_filter"


async def test_sdk_raises_on_rate_limit_and_bad_key(sdk, upstream):
    with pytest.raises(openai.RateLimitError):
        await sdk.chat.completions.create(
            model="429", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    bad = openai.AsyncAzureOpenAI(
        azure_endpoint=upstream.base_url, api_key="nope", api_version="2024-10-21", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        await bad.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )


# --- end to end ----------------------------------------------------------------------


async def test_query_end_to_end_through_the_gateway(upstream):
    config = gateway_config(
        {
            "name": "azure",
            "type": "azure_openai",
            "base_url": upstream.base_url,
            "api_keys": [AZURE_KEY],
            "options": {"api_version": "2025-04-01-preview"},
        },
        ["gpt-4o-mini", "prompt-filter", "429"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query("Say hello", model="gpt-4o-mini")
        exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
        filtered = await client.query("Say something bad", model="prompt-filter")
        assert filtered.text == ""
        assert filtered.done.metadata.finish_reason == pb.FINISH_REASON_CONTENT_FILTER
        await query_fails(client, "429", grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert upstream.requests[0].query == {"api-version": "2025-04-01-preview"}
