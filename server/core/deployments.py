"""A deployment is one configured model on one provider, with what we observe of it."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.providers.base import Provider


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

    def record_success(self, latency_ms: float, ttft_ms: float) -> None:
        self.latencies_ms.append(latency_ms)
        self.ttfts_ms.append(ttft_ms)
        self.outcomes.append((time.monotonic(), True))

    def record_failure(self, reason: str) -> None:
        self.outcomes.append((time.monotonic(), False))
        self.last_error = reason

    def error_rate(self, window_s: float = 60.0) -> float:
        cutoff = time.monotonic() - window_s
        recent = [ok for t, ok in self.outcomes if t >= cutoff]
        return 0.0 if not recent else recent.count(False) / len(recent)


@dataclass(slots=True, eq=False)
class Deployment:
    config: ModelConfig
    provider: Provider
    stats: DeploymentStats = field(default_factory=DeploymentStats)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def provider_name(self) -> str:
        return self.provider.name
