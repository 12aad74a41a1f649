"""A scriptable OpenAI-compatible upstream on loopback: each model name follows a script.

A script is a list of behaviours consumed one per call (the last one repeats):
answer normally, answer after a delay, fail with a status (and retry-after),
die mid-stream, or hang until the client goes away. Every call is recorded with
its arrival time and how it ended, so tests can check retry timing, fallback
order, and that cancelled attempts really closed their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.openai_fake import API_KEY, PROMPT_TOKENS, REPLY, chunk, error_body
from tests.support.running import running_client, settings_for

SCRIPTED = web.AppKey("scripted", "Scripted")


@dataclass(frozen=True)
class Behaviour:
    kind: str = "ok"  # ok | status | die | hang | reset
    status: int = 200
    retry_after_ms: float | None = None
    ttft_s: float = 0.0  # delay before the first content chunk (or the error status)
    gap_s: float = 0.0  # delay between content chunks
    words: int = len(REPLY)
    code: str | None = None  # OpenAI error code, e.g. context_length_exceeded


def ok(ttft_s: float = 0.0, gap_s: float = 0.0, words: int = len(REPLY)) -> Behaviour:
    return Behaviour("ok", ttft_s=ttft_s, gap_s=gap_s, words=words)


def fail(
    status: int,
    retry_after_ms: float | None = None,
    code: str | None = None,
    after_s: float = 0.0,
) -> Behaviour:
    """Answer `status`, after holding the request `after_s` seconds."""
    return Behaviour(
        "status", status=status, retry_after_ms=retry_after_ms, code=code, ttft_s=after_s
    )


def die(after_words: int = 2) -> Behaviour:
    """Stream a few chunks, then drop the connection (no [DONE])."""
    return Behaviour("die", words=after_words)


HANG = Behaviour("hang")
RESET = Behaviour("reset")


@dataclass
class Call:
    model: str
    at: float  # time.monotonic() when the request arrived
    outcome: str = "running"  # done | failed | died | disconnected
    ended_at: float = 0.0


@dataclass
class Scripted:
    base_url: str = ""
    scripts: dict[str, list[Behaviour]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def script(self, model: str, *behaviours: Behaviour) -> None:
        self.scripts[model] = list(behaviours)

    def next_for(self, model: str) -> Behaviour:
        script = self.scripts.get(model) or [ok()]
        return script.pop(0) if len(script) > 1 else script[0]

    def calls_to(self, model: str) -> list[Call]:
        return [c for c in self.calls if c.model == model]

    def models_called(self) -> list[str]:
        return [c.model for c in self.calls]

    async def wait_for(self, predicate, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def _end(self, call: Call, outcome: str) -> None:
        call.outcome, call.ended_at = outcome, time.monotonic()
        async with self.changed:
            self.changed.notify_all()


async def _closed(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


async def _sleep_or_disconnect(request: web.Request, seconds: float) -> bool:
    """Sleep, watching the socket (aiohttp does not cancel handlers); True if it closed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if await _closed(request):
            return True
        await asyncio.sleep(min(0.01, max(end - time.monotonic(), 0)))
    return await _closed(request)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state: Scripted = request.app[SCRIPTED]
    body = orjson.loads(await request.read())
    assert request.headers.get("authorization") == f"Bearer {API_KEY}"
    model = body["model"]
    call = Call(model, time.monotonic())
    state.calls.append(call)
    async with state.changed:
        state.changed.notify_all()
    b = state.next_for(model)
    if b.kind == "reset":
        request.transport.close()
        await state._end(call, "failed")
        return web.Response(status=500)
    if b.kind == "status":
        if b.ttft_s and await _sleep_or_disconnect(request, b.ttft_s):
            await state._end(call, "disconnected")
            return web.Response(status=499)
        headers = {}
        if b.retry_after_ms is not None:
            headers["retry-after-ms"] = str(int(b.retry_after_ms))
        await state._end(call, "failed")
        message = "maximum context length exceeded" if b.code else "scripted failure"
        return web.Response(
            status=b.status,
            headers=headers,
            content_type="application/json",
            body=error_body(message, "invalid_request_error", b.code),
        )
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    try:
        if b.kind == "hang" or b.ttft_s:
            wait = 3600.0 if b.kind == "hang" else b.ttft_s
            if await _sleep_or_disconnect(request, wait):
                await state._end(call, "disconnected")
                return response
        await response.write(chunk(model, {"role": "assistant", "content": ""}))
        words = (REPLY * (b.words // len(REPLY) + 1))[: b.words]
        for i, word in enumerate(words):
            if i and b.gap_s and await _sleep_or_disconnect(request, b.gap_s):
                await state._end(call, "disconnected")
                return response
            await response.write(chunk(model, {"content": word}))
        if b.kind == "die":
            request.transport.close()
            await state._end(call, "died")
            return response
        await response.write(chunk(model, {}, "stop"))
        usage = {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": len(words),
            "total_tokens": PROMPT_TOKENS + len(words),
        }
        await response.write(chunk(model, {}, usage=usage))
        await response.write(b"data: [DONE]\n\n")
        await state._end(call, "done")
    except (ConnectionResetError, asyncio.CancelledError):
        await state._end(call, "disconnected")
        raise
    return response


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": []})


@contextlib.asynccontextmanager
async def scripted_upstream() -> AsyncIterator[Scripted]:
    app = web.Application()
    state = Scripted()
    app[SCRIPTED] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield state
    finally:
        await runner.cleanup()


def routing_config(
    base_url: str,
    models: list[str | dict[str, Any]],
    *,
    provider: str = "scripted",
    **sections: Any,
) -> dict[str, Any]:
    """One OpenAI-compatible provider; each model is a name or a dict of extra model keys.

    Resilience defaults keep tests fast: tiny backoffs, short breaker cooldowns.
    """
    out_models = []
    for m in models:
        spec = {"name": m} if isinstance(m, str) else dict(m)
        spec.setdefault("upstream_model", spec["name"])
        spec.setdefault("provider", provider)
        spec.setdefault("task_types", ["generation"])
        out_models.append(spec)
    resilience = {
        "retries": {"max_attempts": 1, "backoff_initial_ms": 10, "backoff_max_ms": 50},
        "circuit_breaker": {"consecutive_failures": 50, "cooldown_s": 0.2},
    }
    for key, value in sections.pop("resilience", {}).items():
        resilience[key] = {**resilience.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "providers": [
            {
                "name": provider,
                "type": "openai_compatible",
                "base_url": base_url,
                "api_keys": [API_KEY],
            }
        ],
        "models": out_models,
        "resilience": resilience,
        **sections,
    }


@contextlib.asynccontextmanager
async def gateway(upstream: Scripted, models: list, **sections: Any):
    """A gateway routing to `upstream`'s scripted models; yields (app, client)."""
    settings = settings_for(routing_config(upstream.base_url, models, **sections))
    async with running_client(settings) as (app, client):
        yield app, client
