"""The REST shim on the HTTP port, driven by a plain HTTP client as curl users would."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest
from pypdf import PdfReader

from llmproxy.server.api.rest import routes
from tests.support.running import running_app, settings_for


@pytest.fixture
async def base_url():
    async with running_app(settings_for()) as app:
        yield f"http://127.0.0.1:{app.http_port}"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def test_routes_follow_the_proto_annotations():
    table = {(r.http_method, r.path): r.method.name for r in routes()}
    assert table == {
        ("POST", "/api/query"): "Query",
        ("POST", "/api/parallel"): "ParallelQuery",
        ("GET", "/api/status"): "Status",
        ("POST", "/api/download"): "Download",
        ("GET", "/api/usage"): "GetUsage",
    }


async def test_query_streams_ndjson(base_url, http):
    body = {"query": "Hello REST", "model": "mock-fast", "parameters": {"maxTokens": 6}}
    async with http.post(f"{base_url}/api/query", json=body) as response:
        assert response.status == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) async for line in response.content if line.strip()]
    events = [line["result"] for line in lines]
    assert "start" in events[0] and "done" in events[-1]
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert text.startswith("[mock-fast] You asked: Hello REST.")
    assert events[-1]["done"]["metadata"]["outputTokens"] == "6"


async def test_parallel_and_status(base_url, http):
    async with http.post(
        f"{base_url}/api/parallel", json={"query": "hi", "models": ["mock-fast", "mock-smart"]}
    ) as response:
        events = [json.loads(line)["result"] async for line in response.content if line.strip()]
    assert events[-1]["summary"]["succeeded"] == 2
    async with http.get(f"{base_url}/api/status") as response:
        assert response.status == 200
        models = (await response.json())["models"]
    assert {m["name"] for m in models} == {"mock-fast", "mock-smart"}


async def test_download_returns_the_file(base_url, http):
    async with http.post(
        f"{base_url}/api/download",
        json={"content": "Ελληνικά", "format": "DOCUMENT_FORMAT_PDF", "filename": "résumé"},
    ) as r:
        assert r.status == 200
        assert r.headers["content-type"] == "application/pdf"
        assert "filename*=UTF-8''r%C3%A9sum%C3%A9.pdf" in r.headers["content-disposition"]
        data = await r.read()
    assert "Ελληνικά" in PdfReader(io.BytesIO(data)).pages[0].extract_text()


async def test_errors_use_http_status_and_google_rpc_status_json(base_url, http):
    async with http.post(f"{base_url}/api/query", json={"query": "x", "model": "nope"}) as r:
        assert r.status == 404
        body = await r.json()
    assert body["code"] == 5 and "nope" in body["message"]
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    async with http.post(f"{base_url}/api/query", json={"query": "x", "bogus": 1}) as r:
        assert r.status == 400
    async with http.post(f"{base_url}/api/query", data=b"{not json") as r:
        assert r.status == 400
    async with http.post(
        f"{base_url}/api/query", json={"query": "x", "parameters": {"temperature": 9}}
    ) as r:
        assert r.status == 400
        assert (await r.json())["details"][-1]["fieldViolations"][0][
            "field"
        ] == "parameters.temperature"


async def test_metrics_and_probes(base_url, http):
    for path in ("/metrics", "/api/metrics"):
        async with http.get(base_url + path) as r:
            assert r.status == 200
    async with http.get(f"{base_url}/readyz") as r:
        assert (await r.json()) == {"status": "serving"}


@pytest.mark.parametrize("raw", [b"5", b"null", b"true", b'"text"'])
async def test_a_json_body_that_is_not_an_object_is_a_bad_request(base_url, http, raw):
    async with http.post(
        f"{base_url}/api/query", data=raw, headers={"content-type": "application/json"}
    ) as r:
        assert r.status == 400
        assert (await r.json())["code"] == 3


@pytest.mark.parametrize("timeout", ["inf", "nan", "1e300"])
async def test_an_unbounded_grpc_timeout_header_means_no_deadline_not_an_instant_504(
    base_url, http, timeout
):
    async with http.get(f"{base_url}/api/status", headers={"grpc-timeout": timeout}) as r:
        assert r.status == 200
