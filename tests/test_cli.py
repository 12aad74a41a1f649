"""The `llmproxy` command against a running gateway, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from tests.support.running import running_app, settings_for


@pytest.fixture
async def target():
    async with running_app(settings_for()) as app:
        yield f"127.0.0.1:{app.grpc_port}"


async def cli(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "llmproxy.client.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_query_streams_text_and_reports_usage(target):
    code, out, err = await cli("query", "--target", target, "-m", "mock-fast", "Hello CLI")
    assert code == 0, err
    assert "You asked: Hello CLI." in out
    assert "[mock-fast via mock]" in err and "out tokens" in err


async def test_query_reads_stdin_and_prints_json_events(target):
    code, out, err = await cli("query", "--target", target, "--json", "-", stdin=b"from stdin")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert "start" in events[0] and "done" in events[-1]


async def test_parallel_status_download(target, tmp_path):
    code, out, err = await cli(
        "parallel", "--target", target, "-m", "mock-fast", "-m", "mock-smart", "compare"
    )
    assert code == 0, err
    assert "=== mock-fast" in out and "=== mock-smart" in out
    assert "2 succeeded, 0 failed" in err
    code, out, err = await cli("status", "--target", target)
    assert code == 0, err
    assert "mock-fast" in out and "yes" in out
    code, out, err = await cli(
        "download",
        "--target",
        target,
        "-f",
        "pdf",
        "--filename",
        "ans",
        "-o",
        str(tmp_path),
        "Ελληνικά",
    )
    assert code == 0, err
    assert (tmp_path / "ans.pdf").read_bytes().startswith(b"%PDF")


async def test_errors_exit_non_zero_with_the_status(target):
    code, _, err = await cli("query", "--target", target, "-m", "nope", "hi")
    assert code == 1
    assert "NOT_FOUND" in err and "nope" in err
