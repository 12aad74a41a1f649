"""The pooled upstream client: no cookies carried between calls, and URLs parsed once but right."""

from __future__ import annotations

import httpx
import pytest
from aiohttp import web

from llmproxy.server.providers.http import (
    URL_CACHE_SIZE,
    HttpClientSettings,
    UpstreamClient,
    build_http_client,
)
from tests.support.upstream import record, serve_upstream


async def echo(request: web.Request) -> web.Response:
    """Answers with a session cookie, as api.openai.com's CDN does, and the query it saw."""
    await record(request)
    response = web.Response(text=request.rel_url.raw_query_string)
    response.set_cookie("__cf_bm", "caller-a-session", path="/")
    return response


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def test_a_cookie_one_answer_sets_never_reaches_the_next_request() -> None:
    async with serve_upstream(echo_app()) as fake:
        client = build_http_client(HttpClientSettings(read_timeout_s=2.0))
        try:
            assert isinstance(client, UpstreamClient)
            first = await client.post(fake.base_url + "/v1/chat/completions", content=b"{}")
            assert "__cf_bm" in first.headers["set-cookie"]
            await client.post(fake.base_url + "/v1/chat/completions", content=b"{}")
            async with client.stream("GET", fake.base_url + "/v1/models") as response:
                await response.aread()
        finally:
            await client.aclose()
    assert [r.headers.get("cookie") for r in fake.requests] == [None, None, None]
    assert len(client.cookies) == 0


async def test_cached_urls_keep_their_paths_and_queries_apart() -> None:
    async with serve_upstream(echo_app()) as fake:
        client = build_http_client(HttpClientSettings(read_timeout_s=2.0))
        urls = [
            fake.base_url + "/v1/chat/completions",
            fake.base_url + "/deployments/a/chat?api-version=2024-10-21",
            fake.base_url + "/deployments/b/chat?api-version=2024-10-21",
        ]
        try:
            for url in urls * 2:
                response = await client.post(url, content=b"{}")
                assert response.text == url.partition("?")[2]
            response = await client.get(fake.base_url + "/q", params={"k": "v w"})
            assert response.text == "k=v+w"
        finally:
            await client.aclose()
    assert [r.path for r in fake.requests] == [
        "/v1/chat/completions",
        "/deployments/a/chat",
        "/deployments/b/chat",
    ] * 2 + ["/q"]


async def test_the_url_cache_stays_bounded() -> None:
    client = UpstreamClient()
    try:
        for i in range(URL_CACHE_SIZE + 10):
            request = client.build_request("GET", f"http://127.0.0.1:9/{i}")
            assert request.url.path == f"/{i}"
        assert len(client._urls) <= URL_CACHE_SIZE
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("method", "content", "headers"),
    [
        (
            "POST",
            b'{"model": "m"}',
            {"content-type": "application/json", "accept": "text/event-stream"},
        ),
        ("POST", b"", {"Authorization": "Bearer k", "User-Agent": "llmproxy-test"}),
        ("GET", None, {"accept": "application/json"}),
        ("GET", None, None),
        ("POST", b"x", {"host": "upstream.example", "content-length": "1"}),
    ],
)
def test_the_one_step_request_is_the_one_httpx_builds(method, content, headers) -> None:
    client = build_http_client(HttpClientSettings())
    url = "http://127.0.0.1:8080/v1/chat/completions"
    ours = client.build_request(method, url, content=content, headers=headers)
    theirs = httpx.AsyncClient.build_request(client, method, url, content=content, headers=headers)
    assert (ours.method, ours.url) == (theirs.method, theirs.url)
    assert sorted(ours.headers.multi_items()) == sorted(theirs.headers.multi_items())
    assert b"".join(ours.stream) == b"".join(theirs.stream)
    assert ours.extensions == theirs.extensions
