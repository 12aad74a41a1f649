"""ParallelQuery end to end: concurrency, interleaving, in-band failures, summary."""

from __future__ import annotations

import time

import pytest

from llmproxy.v1 import llmproxy_pb2 as pb
from tests.support.running import running_client, settings_for


def mock_config(**options) -> dict:
    return {
        "providers": [
            {"name": "slow", "type": "mock", "options": {"ttft_ms": 300, "tokens_per_s": 200}},
            {"name": "fast", "type": "mock", "options": {"ttft_ms": 10, "tokens_per_s": 1000}},
        ],
        "models": [
            {"name": "slow-a", "provider": "slow", "task_types": ["generation"]},
            {"name": "slow-b", "provider": "slow", "task_types": ["generation"]},
            {"name": "fast-a", "provider": "fast", "task_types": ["generation", "code"]},
            {"name": "broken", "provider": "fast", "upstream_model": "mock-error"},
        ],
    }


@pytest.fixture
async def gateway():
    async with running_client(settings_for(mock_config())) as pair:
        yield pair


async def collect(client, request):
    return [e async for e in client.parallel(request)]


async def test_total_time_is_close_to_the_slowest_model_not_the_sum(gateway):
    _, client = gateway
    request = pb.ParallelQueryRequest(
        query="compare",
        models=["slow-a", "slow-b", "fast-a"],
        parameters=pb.Parameters(max_tokens=10),
    )
    started = time.perf_counter()
    events = await collect(client, request)
    elapsed = time.perf_counter() - started
    # Each slow model takes ~0.35 s; run one after another they would take > 0.7 s.
    assert elapsed < 0.65
    summary = events[-1].summary
    assert events[-1].WhichOneof("event") == "summary"
    assert (summary.succeeded, summary.failed) == (3, 0)
    assert 300 <= summary.total_time_ms < 650


async def test_events_are_tagged_interleaved_and_complete_per_model(gateway):
    _, client = gateway
    request = pb.ParallelQueryRequest(
        query="hello",
        models=["slow-a", "fast-a"],
        parameters=pb.Parameters(max_tokens=8),
        request_id="par-1",
    )
    events = await collect(client, request)
    assert all(e.request_id == "par-1" for e in events)
    per_model: dict[str, list[str]] = {}
    for e in events[:-1]:
        per_model.setdefault(e.model, []).append(e.WhichOneof("event"))
    for kinds in per_model.values():
        assert kinds[0] == "start" and kinds[-1] == "done"
        assert set(kinds[1:-1]) == {"delta"}
    # The fast model finishes before the slow one has started streaming.
    order = [e.model for e in events[:-1] if e.WhichOneof("event") == "done"]
    assert order == ["fast-a", "slow-a"]
    done = {e.model: e.done for e in events if e.WhichOneof("event") == "done"}
    assert done["fast-a"].metadata.output_tokens == 8


async def test_one_models_failure_is_reported_in_band_and_others_finish(gateway):
    _, client = gateway
    request = pb.ParallelQueryRequest(query="hello", models=["broken", "fast-a"])
    events = await collect(client, request)
    errors = [e for e in events if e.WhichOneof("event") == "error"]
    assert [e.model for e in errors] == ["broken"]
    assert errors[0].error.code == "UNAVAILABLE"
    assert errors[0].error.reason == "UPSTREAM_UNAVAILABLE"
    assert any(e.model == "fast-a" and e.WhichOneof("event") == "done" for e in events)
    summary = events[-1].summary
    assert (summary.succeeded, summary.failed) == (1, 1)


async def test_unknown_model_is_reported_in_band(gateway):
    _, client = gateway
    events = await collect(client, pb.ParallelQueryRequest(query="x", models=["nope", "fast-a"]))
    errors = [e.error for e in events if e.WhichOneof("event") == "error"]
    assert [(e.code, e.reason) for e in errors] == [("NOT_FOUND", "MODEL_NOT_FOUND")]


async def test_models_default_to_the_task_types_models(gateway):
    _, client = gateway
    events = await collect(client, pb.ParallelQueryRequest(query="x", task_type="code"))
    assert {e.model for e in events if e.WhichOneof("event") == "done"} == {"fast-a"}


async def test_duplicate_models_are_invalid(gateway):
    import grpc

    _, client = gateway
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(client, pb.ParallelQueryRequest(query="x", models=["fast-a", "fast-a"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancelling_the_call_stops_every_model(gateway):
    app, client = gateway
    call = client.parallel(
        pb.ParallelQueryRequest(
            query="x", models=["slow-a", "fast-a"], parameters=pb.Parameters(max_tokens=200)
        )
    )
    async for event in call:
        if event.WhichOneof("event") == "delta":
            call.cancel()
            break
    import asyncio

    for _ in range(50):
        if all(d.stats.in_flight == 0 for d in app.catalog.deployments.values()):
            break
        await asyncio.sleep(0.02)
    assert all(d.stats.in_flight == 0 for d in app.catalog.deployments.values())
