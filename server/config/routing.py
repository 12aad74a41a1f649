"""Groups, auto routing by task type, and resilience (retries, fallback, circuit breakers)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from llmproxy.server.config.base import Section
from llmproxy.server.errors import UpstreamError, UpstreamInvalidRequestError

Strategy = Literal[
    "priority", "weighted", "round_robin", "least_latency", "lowest_cost", "least_busy", "ab_split"
]


def upstream_reasons() -> frozenset[str]:
    """Every reason an upstream failure can carry (the values `fallback_on` may list)."""
    seen: set[str] = set()
    stack: list[type[UpstreamError]] = [UpstreamError]
    while stack:
        cls = stack.pop()
        seen.add(cls.reason)
        stack.extend(cls.__subclasses__())
    return frozenset(seen)


# The caller's own bad input would fail anywhere; everything else may succeed elsewhere
# (CONTEXT_TOO_LONG falls back only to candidates with a larger context window).
DEFAULT_FALLBACK_ON = tuple(sorted(upstream_reasons() - {UpstreamInvalidRequestError.reason}))


class GroupMember(Section):
    model: str
    weight: float = Field(1.0, ge=0)
    # Share of traffic in percent for the ab_split strategy; the members' shares sum to 100.
    percent: float | None = Field(None, ge=0, le=100)


class HedgeConfig(Section):
    """Opt-in hedging: a second attempt when the first token is late; the first to answer wins."""

    enabled: bool = False
    # Fixed threshold; with after_p95 it is the threshold until enough TTFTs are observed.
    after_ms: float | None = Field(None, gt=0)
    # Use the deployment's observed p95 time to first token as the threshold.
    after_p95: bool = False
    min_samples: int = Field(20, ge=1)

    @model_validator(mode="after")
    def check_threshold(self) -> Self:
        if self.enabled and self.after_ms is None and not self.after_p95:
            raise ValueError("hedge.enabled needs after_ms or after_p95")
        return self


class GroupConfig(Section):
    name: str = Field(min_length=1)
    strategy: Strategy = "priority"
    members: list[GroupMember] = Field(min_length=1)
    fallback: list[str] = Field(default_factory=list)
    hedge: HedgeConfig = HedgeConfig()

    @model_validator(mode="after")
    def check_members(self) -> Self:
        names = [m.model for m in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"group {self.name!r}: each member may appear once")
        if self.strategy == "ab_split":
            shares = [m.percent for m in self.members]
            if any(s is None for s in shares):
                raise ValueError(f"group {self.name!r}: ab_split needs a percent on every member")
            if abs(sum(s for s in shares if s is not None) - 100.0) > 1e-6:
                raise ValueError(f"group {self.name!r}: ab_split percents must sum to 100")
        return self


def fallback_cycles(groups: list[GroupConfig]) -> list[str]:
    """A message for each group whose fallback chain leads back to itself."""
    by_name = {g.name: g for g in groups}
    found: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            if name == path[0]:
                found.append(f"groups: fallback cycle {' -> '.join((*path, name))}")
            return
        for fallback in by_name[name].fallback if name in by_name else ():
            visit(fallback, (*path, name))

    for group in groups:
        visit(group.name, ())
    return found[:1]  # one cycle shows up once per member; naming it once is enough


class RoutingConfig(Section):
    # task_type -> ordered candidates (models or groups); "default" when none matches.
    auto: dict[str, list[str]] = Field(default_factory=dict)
    # Seconds between checks of the config file for changes; 0 reloads on SIGHUP only.
    watch_interval_s: float = Field(2.0, ge=0)


class RetryConfig(Section):
    # Attempts per deployment, the first included; 1 disables retries.
    max_attempts: int = Field(3, ge=1)
    backoff_initial_ms: float = Field(100, ge=0)
    backoff_max_ms: float = Field(2000, ge=0)
    # A longer retry-after is not waited out: fall back, or return it to the caller.
    max_retry_after_ms: float = Field(1000, ge=0)


class CircuitBreakerConfig(Section):
    consecutive_failures: int = Field(5, ge=1)
    error_rate: float = Field(0.5, gt=0, le=1)
    # The error rate only counts once the window holds this many outcomes.
    min_requests: int = Field(10, ge=1)
    window_s: float = Field(30, gt=0)
    cooldown_s: float = Field(15, ge=0)
    half_open_probes: int = Field(1, ge=1)


class ResilienceConfig(Section):
    retries: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    # Error reasons that move on to the next candidate (before the first token only).
    fallback_on: list[str] = Field(default_factory=lambda: list(DEFAULT_FALLBACK_ON))

    @field_validator("fallback_on")
    @classmethod
    def check_reasons(cls, reasons: list[str]) -> list[str]:
        known = upstream_reasons()
        unknown = [r for r in reasons if r not in known]
        if unknown:
            raise ValueError(f"unknown reasons {unknown}; known: {sorted(known)}")
        return reasons
