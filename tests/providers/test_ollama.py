"""The Ollama adapter: NDJSON decoding on a real-format fixture, the adapter against a strict
fake on loopback, the official `ollama` client against the same fake, and a gRPC Query."""

from __future__ import annotations

import pathlib

import grpc
import ollama
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
from llmproxy.server.providers import ollama as wire
from tests.fakes.ollama_fake import MODELS, PROMPT_TOKENS, REPLY, ollama_app
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

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "ollama"
TEXT = "".join(REPLY)


upstream = upstream_fixture(ollama_app)
http = http_fixture()


def provider(upstream, http, keys=(), **options):
    return make("ollama", upstream.base_url, http, keys, name="ollama", **options)


# --- pure functions ------------------------------------------------------------------


def test_fixture_decodes_identically_at_every_split():
    raw = (FIXTURES / "chat_stream.ndjson").read_bytes()
    for cut in range(len(raw) + 1):
        decoder = wire.NDJSONDecoder("ollama")
        assert decoder.feed(raw[:cut]) + decoder.feed(raw[cut:]) == "The sky is blue — très bleu."
        assert decoder.done
        finish = decoder.finish()
        assert (finish.reason, finish.raw_reason) == (FinishReason.STOP, "stop")
        assert finish.usage == Usage(31, 5, 0)


def test_parameters_become_ollama_options(http):
    p = make("ollama", "", http, keep_alive="10m", model_options={"num_ctx": 8192})
    assert p.url(chat()) == "http://127.0.0.1:11434/api/chat"
    request = chat(
        "llama3.2",
        ("system", "S"),
        ("user", "Hi"),
        temperature=0.5,
        max_tokens=20,
        top_p=0.8,
        stop=("###",),
        seed=9,
    )
    assert p.build_body(request) == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "options": {
            "num_ctx": 8192,
            "temperature": 0.5,
            "num_predict": 20,
            "top_p": 0.8,
            "stop": ["###"],
            "seed": 9,
        },
        "keep_alive": "10m",
    }
    assert "options" not in make("ollama", "", http).build_body(chat())


def test_bad_option_fails_at_start(http):
    with pytest.raises(ValueError, match=r"options\.model_options"):
        make("ollama", "", http, model_options=[1])


def test_other_done_reasons_are_reported_raw():
    decoder = wire.NDJSONDecoder("ollama")
    decoder.feed(b'{"message":{"content":""},"done":true,"done_reason":"unload"}\n')
    assert (decoder.finish().reason, decoder.finish().raw_reason) == (FinishReason.OTHER, "unload")


# --- the adapter against the fake -------------------------------------------------------


async def test_stream_text_usage_and_exact_request(upstream, http):
    p = provider(upstream, http)
    text, finish, _ = await collect(p, chat("llama3.2", temperature=0.1, max_tokens=50))
    assert text == TEXT and finish.reason == FinishReason.STOP
    assert finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert "authorization" not in sent.headers
    assert sent.headers["accept"] == "application/x-ndjson"
    assert orjson.loads(sent.body) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "options": {"temperature": 0.1, "num_predict": 50},
    }


async def test_length_finish(upstream, http):
    _, finish, _ = await collect(provider(upstream, http), chat("llama3.2", max_tokens=3))
    assert (finish.reason, finish.raw_reason) == (FinishReason.LENGTH, "length")


async def test_bearer_token_when_configured(http):
    async with serve_upstream(ollama_app(token="ollama-cloud-key")) as fake:
        text, _, _ = await collect(
            provider(fake, http, keys=("ollama-cloud-key",)), chat("llama3.2")
        )
        assert text == TEXT
        with pytest.raises(UpstreamAuthError):
            await collect(provider(fake, http), chat("llama3.2"))
        with pytest.raises(UpstreamAuthError):
            await provider(fake, http, keys=("wrong",)).list_models()


@pytest.mark.parametrize(
    ("model", "cls", "status", "needle"),
    [
        ("429", UpstreamRateLimitedError, 429, "too many requests"),
        ("busy", UpstreamUnavailableError, 503, "server busy"),
        ("500", UpstreamUnavailableError, 500, "llama runner"),
        ("not-pulled", UpstreamInvalidRequestError, 404, "try pulling it first"),
    ],
)
async def test_errors_before_the_stream(upstream, http, model, cls, status, needle):
    error = await refused(provider(upstream, http), chat(model), cls, status=status)
    assert needle in error.message
    if model == "429":
        assert error.retry_after == 3


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


async def test_list_models_from_tags(upstream, http):
    assert await provider(upstream, http).list_models() == MODELS
    assert upstream.requests[-1].path == "/api/tags"


# --- keep the fake honest: the official client against it ------------------------------


async def test_client_parses_the_fake_stream(upstream):
    client = ollama.AsyncClient(host=upstream.base_url)
    parts = [
        p
        async for p in await client.chat(
            model="llama3.2",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            options={"temperature": 0.1, "num_predict": 50, "seed": 1},
        )
    ]
    assert "".join(p.message.content for p in parts) == TEXT
    last = parts[-1]
    assert last.done and last.done_reason == "stop"
    assert (last.prompt_eval_count, last.eval_count) == (PROMPT_TOKENS, len(REPLY))
    assert [m.model for m in (await client.list()).models] == MODELS


async def test_client_raises_on_the_fake_errors(upstream):
    client = ollama.AsyncClient(host=upstream.base_url)
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model="not-pulled", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="error was encountered"):
        async for _ in await client.chat(
            model="mid-stream-error", messages=[{"role": "user", "content": "Hi"}], stream=True
        ):
            pass


# --- end to end ----------------------------------------------------------------------


async def test_query_end_to_end_through_the_gateway(upstream):
    config = gateway_config(
        {"name": "local", "type": "ollama", "base_url": upstream.base_url},
        ["llama3.2", "busy"],
    )
    async with running_client(settings_for(config)) as (_, client):
        result = await client.query("Say hello", model="llama3.2", max_tokens=40)
        exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
        await query_fails(client, "busy", grpc.StatusCode.UNAVAILABLE)
    assert orjson.loads(upstream.requests[0].body)["options"] == {"num_predict": 40}
