"""A built-in provider with no network: deterministic answers so every RPC works offline.

Options (provider `options` in config): `ttft_ms` (delay before the first word),
`tokens_per_s` (0 streams as fast as possible), `failure_rate` (0..1, fails
before the first word), `max_words`. An upstream model name containing `error`
always fails, which makes fallback easy to try by hand.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

from llmproxy.server.domain import (
    ChatRequest,
    Finish,
    FinishReason,
    ProviderEvent,
    TextDelta,
    Usage,
)
from llmproxy.server.errors import UpstreamUnavailableError
from llmproxy.server.providers.base import Provider

_WORDS = [
    "gateway",
    "stream",
    "token",
    "model",
    "latency",
    "route",
    "cache",
    "answer",
    "request",
    "provider",
    "circuit",
    "fallback",
    "budget",
    "metric",
    "trace",
    "proxy",
    "context",
    "window",
    "reply",
    "signal",
    "quota",
    "retry",
]


def mock_answer(model: str, prompt: str, max_words: int) -> list[str]:
    """The words the mock answers with: the same prompt always gets the same answer."""
    digest = hashlib.sha256(f"{model}\0{prompt}".encode()).digest()
    rng = random.Random(digest)
    head = f"[{model}] You asked: {' '.join(prompt.split()[:12])}.".split()
    body = [rng.choice(_WORDS) for _ in range(max(max_words - len(head), 0))]
    words = (head + body)[:max_words]
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class MockProvider(Provider):
    uses_http = False

    def _option(self, name: str, default: float) -> float:
        return float(self.settings.options.get(name, default))  # type: ignore[arg-type]

    async def stream(self, request: ChatRequest) -> AsyncIterator[ProviderEvent]:
        ttft = self._option("ttft_ms", 0) / 1000.0
        tps = self._option("tokens_per_s", 0)
        failure_rate = self._option("failure_rate", 0)
        max_words = int(self._option("max_words", 24))
        if request.params.max_tokens is not None:
            max_words = min(max_words, request.params.max_tokens)
        if ttft:
            await asyncio.sleep(ttft)
        if "error" in request.model or (failure_rate and random.random() < failure_rate):
            raise UpstreamUnavailableError(
                f"{self.name}: mock failure", provider=self.name, status=503
            )
        prompt = request.messages[-1].content if request.messages else ""
        words = mock_answer(request.model, prompt, max_words)
        for word in words:
            if tps:
                await asyncio.sleep(1.0 / tps)
            yield TextDelta(word)
        input_tokens = sum(len(m.content.split()) for m in request.messages)
        reason = (
            FinishReason.LENGTH if len(words) == request.params.max_tokens else FinishReason.STOP
        )
        yield Finish(
            reason, reason.value, Usage(input_tokens=input_tokens, output_tokens=len(words))
        )

    async def list_models(self) -> list[str]:
        return list(self.settings.options.get("models", []))  # type: ignore[call-overload]

    async def health_check(self) -> None:
        return None
