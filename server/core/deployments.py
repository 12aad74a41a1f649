"""A deployment is one configured model on one provider, with what we observe of it."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.config.routing import CircuitBreakerConfig
from llmproxy.server.core.routing.breaker import CircuitBreaker
from llmproxy.server.providers.base import Provider

# Weight of the newest sample in the moving averages: about the last ten requests count.
EWMA_ALPHA = 0.2
# Sorting the TTFT window costs microseconds; redo it only every few samples.
_P95_EVERY = 8


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; 0.0 for no data."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass(slots=True)
class DeploymentStats:
    """Recent outcomes of real traffic; feeds Status and latency-aware routing."""

    window: int = 256
    in_flight: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    ttfts_ms: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    outcomes: deque[tuple[float, bool]] = field(default_factory=lambda: deque(maxlen=256))
    last_error: str = ""
    # Exponential moving averages of successful attempts (least_latency, deadline checks).
    ewma_latency_ms: float = 0.0
    ewma_ttft_ms: float = 0.0
    samples: int = 0
    _p95_at: int = -_P95_EVERY
    _p95: float = 0.0

    def record_success(self, latency_ms: float, ttft_ms: float) -> None:
        self.latencies_ms.append(latency_ms)
        self.ttfts_ms.append(ttft_ms)
        self.outcomes.append((time.monotonic(), True))
        if self.samples:
            self.ewma_latency_ms += EWMA_ALPHA * (latency_ms - self.ewma_latency_ms)
            self.ewma_ttft_ms += EWMA_ALPHA * (ttft_ms - self.ewma_ttft_ms)
        else:
            self.ewma_latency_ms, self.ewma_ttft_ms = latency_ms, ttft_ms
        self.samples += 1

    def record_failure(self, reason: str) -> None:
        self.outcomes.append((time.monotonic(), False))
        self.last_error = reason

    def error_rate(self, window_s: float = 60.0) -> float:
        cutoff = time.monotonic() - window_s
        recent = [ok for t, ok in self.outcomes if t >= cutoff]
        return 0.0 if not recent else recent.count(False) / len(recent)

    def ttft_p95_ms(self) -> float:
        """The p95 time to first token of the recent window (hedging threshold)."""
        if self.samples - self._p95_at >= _P95_EVERY:
            self._p95 = percentile(list(self.ttfts_ms), 0.95)
            self._p95_at = self.samples
        return self._p95

    def expected_latency_s(self) -> float:
        """How long an attempt is expected to take; 0.0 before anything was observed."""
        return self.ewma_latency_ms / 1000.0


@dataclass(slots=True, eq=False)
class Deployment:
    config: ModelConfig
    provider: Provider
    stats: DeploymentStats = field(default_factory=DeploymentStats)
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(CircuitBreakerConfig()))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider_name(self) -> str:
        return self.provider.name
