"""Groups, auto routing by task type, and resilience (retries, circuit breakers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmproxy.server.config.base import Section

Strategy = Literal[
    "priority", "weighted", "round_robin", "least_latency", "lowest_cost", "least_busy", "ab_split"
]


class GroupMember(Section):
    model: str
    weight: float = Field(1.0, ge=0)


class GroupConfig(Section):
    name: str = Field(min_length=1)
    strategy: Strategy = "priority"
    members: list[GroupMember] = Field(min_length=1)
    fallback: list[str] = Field(default_factory=list)


class RoutingConfig(Section):
    # task_type -> ordered candidates (models or groups); "default" when none matches.
    auto: dict[str, list[str]] = Field(default_factory=dict)


class RetryConfig(Section):
    max_attempts: int = Field(3, ge=1)
    backoff_initial_ms: float = Field(100, ge=0)
    backoff_max_ms: float = Field(2000, ge=0)


class CircuitBreakerConfig(Section):
    consecutive_failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    window_s: float = Field(30, gt=0)
    cooldown_s: float = Field(15, ge=0)
    half_open_probes: int = Field(1, ge=1)


class ResilienceConfig(Section):
    retries: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
