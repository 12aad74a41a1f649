"""The generic OpenAI-compatible adapter (vLLM, LM Studio, OpenRouter, Groq, Together, xAI,
Perplexity): configurable base URL and extra headers, only the common subset of fields,
`include_usage: false` for servers that refuse `stream_options`; the official `openai` SDK
against the same fake configurations; a gRPC Query end to end."""

from __future__ import annotations

import socket

import openai
import orjson
import pytest

from llmproxy.server.domain import FinishReason, Usage
from llmproxy.server.errors import UpstreamInvalidRequestError, UpstreamUnavailableError
from llmproxy.server.providers.openai_compat import ChunkDecoder, OpenAICompatibleProvider
from tests.fakes.openai_fake import API_KEY, PROMPT_TOKENS, REPLY, FakeConfig, openai_app
from tests.providers.chat_harness import (
    chat,
    collect,
    exact_answer,
    gateway_config,
    http_fixture,
    make,
)
from tests.support.running import running_client, settings_for
from tests.support.upstream import serve_upstream

TEXT = "".join(REPLY)
OPENROUTER_HEADERS = {"http-referer": "https://llmproxy.example", "x-title": "llmproxy"}


http = http_fixture()


def generic(base_url, http, keys=(API_KEY,), headers=None, **options):
    return make(
        "openai_compatible", base_url + "/v1", http, keys, name="gen", headers=headers, **options
    )


def test_body_is_the_common_subset_only(http):
    p = make("openai_compatible", "http://vllm:8000/v1", http)
    assert isinstance(p, OpenAICompatibleProvider)
    assert p.url(chat()) == "http://vllm:8000/v1/chat/completions"
    assert p.build_body(chat("m", ("system", "S"), ("user", "U"), max_tokens=3)) == {
        "model": "m",
        "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 3,
    }
    assert "stream_options" not in make(
        "openai_compatible", "http://x/v1", http, include_usage=False
    ).build_body(chat())


def test_base_url_is_required(http):
    with pytest.raises(ValueError, match=r"providers\[p\]\.base_url is required"):
        make("openai_compatible", "", http)


def test_groq_usage_in_x_groq_is_read():
    decoder = ChunkDecoder("groq", lambda e: AssertionError(e))
    decoder.feed(
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"x_groq":{"id":"req_01","usage":{"prompt_tokens":4,"completion_tokens":1}}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert decoder.finish().usage == Usage(4, 1, 0)


def test_error_event_in_the_stream_is_raised():
    decoder = ChunkDecoder("gen", lambda e: UpstreamUnavailableError(str(e)))
    with pytest.raises(UpstreamUnavailableError, match="overloaded"):
        decoder.feed(b'event: error\ndata: {"message": "overloaded"}\n\n')


async def test_refused_connection_is_unavailable_not_a_timeout(http):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UpstreamUnavailableError, match="ConnectionRefusedError"):
        await collect(generic(f"http://127.0.0.1:{port}", http), chat("ok"))


async def test_openrouter_style_headers_and_keepalive_comments(http):
    config = FakeConfig(required_headers=OPENROUTER_HEADERS)
    async with serve_upstream(openai_app(config)) as fake:
        with pytest.raises(UpstreamInvalidRequestError, match="missing header"):
            await collect(generic(fake.base_url, http), chat("ok"))
        p = generic(fake.base_url, http, headers=OPENROUTER_HEADERS)
        text, finish, _ = await collect(p, chat("keepalive"))
        assert text == TEXT and finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)
        sent = fake.requests[-1]
        assert {k: sent.headers[k] for k in OPENROUTER_HEADERS} == OPENROUTER_HEADERS


async def test_server_refusing_stream_options_works_with_include_usage_off(http):
    async with serve_upstream(openai_app(FakeConfig(reject_stream_options=True))) as fake:
        with pytest.raises(UpstreamInvalidRequestError, match="stream_options"):
            await collect(generic(fake.base_url, http), chat("ok"))
        text, finish, _ = await collect(
            generic(fake.base_url, http, include_usage=False), chat("ok")
        )
        assert text == TEXT and finish.usage is None
        assert "stream_options" not in orjson.loads(fake.requests[-1].body)


async def test_usage_on_the_finish_chunk(http):
    config = FakeConfig(reject_stream_options=True, usage_on_finish=True)
    async with serve_upstream(openai_app(config)) as fake:
        p = generic(fake.base_url, http, include_usage=False)
        text, finish, _ = await collect(p, chat("ok", max_tokens=2))
        assert text == TEXT
        assert finish.reason == FinishReason.LENGTH
        assert finish.usage == Usage(PROMPT_TOKENS, len(REPLY), 0)


async def test_keyless_local_server(http):
    async with serve_upstream(openai_app(FakeConfig(auth_required=False))) as fake:
        text, _, _ = await collect(generic(fake.base_url, http, keys=()), chat("ok"))
        assert text == TEXT
        assert "authorization" not in fake.requests[-1].headers
        assert await generic(fake.base_url, http, keys=()).list_models()


async def test_sdk_parses_the_compatible_variants():
    config = FakeConfig(reject_stream_options=True, usage_on_finish=True, auth_required=False)
    async with serve_upstream(openai_app(config)) as fake:
        sdk = openai.AsyncOpenAI(base_url=fake.base_url + "/v1", api_key="unused", max_retries=0)
        stream = await sdk.chat.completions.create(
            model="keepalive", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        text, usage = [], None
        async for ev in stream:
            text.extend(c.delta.content or "" for c in ev.choices)
            usage = ev.usage or usage
        assert "".join(text) == TEXT
        assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, len(REPLY))
        with pytest.raises(openai.BadRequestError, match="stream_options"):
            await sdk.chat.completions.create(
                model="ok",
                messages=[{"role": "user", "content": "Hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )


async def test_query_end_to_end_through_the_gateway():
    config = FakeConfig(
        required_headers=OPENROUTER_HEADERS, reject_stream_options=True, usage_on_finish=True
    )
    async with serve_upstream(openai_app(config)) as fake:
        settings = settings_for(
            gateway_config(
                {
                    "name": "openrouter",
                    "type": "openai_compatible",
                    "base_url": fake.base_url + "/v1",
                    "api_keys": [API_KEY],
                    "headers": OPENROUTER_HEADERS,
                    "options": {"include_usage": False},
                },
                ["ok", "keepalive"],
            )
        )
        async with running_client(settings) as (_, client):
            for model in ("ok", "keepalive"):
                result = await client.query("Say hello", model=model)
                exact_answer(result, TEXT, PROMPT_TOKENS, len(REPLY))
