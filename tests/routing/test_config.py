"""The routing and resilience config keys: the issue's shape loads, mistakes are named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmproxy.server.config import Settings
from llmproxy.server.config.routing import DEFAULT_FALLBACK_ON, ResilienceConfig

ISSUE_EXAMPLE = {
    "providers": [{"name": "openai", "type": "mock"}, {"name": "anthropic", "type": "mock"}],
    "models": [
        {
            "name": "gpt-4o-mini",
            "provider": "openai",
            "upstream_model": "gpt-4o-mini",
            "context_window": 128000,
            "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.60},
            "task_types": ["generation", "summarization"],
        },
        {"name": "claude-haiku", "provider": "anthropic"},
        {"name": "gemini-flash", "provider": "openai"},
    ],
    "groups": [
        {
            "name": "fast",
            "strategy": "weighted",
            "members": [
                {"model": "gpt-4o-mini", "weight": 3},
                {"model": "claude-haiku", "weight": 1},
            ],
            "fallback": ["gemini-flash"],
        }
    ],
    "routing": {"auto": {"summarization": ["fast", "claude-haiku"], "default": ["fast"]}},
    "resilience": {
        "retries": {"max_attempts": 3, "backoff_initial_ms": 100, "backoff_max_ms": 2000},
        "circuit_breaker": {
            "consecutive_failures": 5,
            "error_rate": 0.5,
            "window_s": 30,
            "cooldown_s": 15,
            "half_open_probes": 1,
        },
    },
}


def with_group(**group) -> dict:
    return {**ISSUE_EXAMPLE, "groups": [{"name": "fast", **group}]}


def test_the_issue_example_loads():
    settings = Settings(**ISSUE_EXAMPLE)
    assert settings.groups[0].strategy == "weighted"
    assert settings.resilience.retries.max_attempts == 3
    assert not settings.groups[0].hedge.enabled


def test_default_fallback_reasons_exclude_only_the_callers_bad_request():
    assert "UPSTREAM_INVALID_REQUEST" not in DEFAULT_FALLBACK_ON
    assert {"CONTEXT_TOO_LONG", "UPSTREAM_UNAVAILABLE", "UPSTREAM_RATE_LIMITED"} <= set(
        DEFAULT_FALLBACK_ON
    )


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            {
                "strategy": "ab_split",
                "members": [
                    {"model": "gpt-4o-mini", "percent": 60},
                    {"model": "claude-haiku", "percent": 30},
                ],
            },
            "percents must sum to 100",
        ),
        (
            {
                "strategy": "ab_split",
                "members": [{"model": "gpt-4o-mini"}, {"model": "claude-haiku"}],
            },
            "needs a percent on every member",
        ),
        (
            {"members": [{"model": "gpt-4o-mini"}, {"model": "gpt-4o-mini"}]},
            "each member may appear once",
        ),
        (
            {"members": [{"model": "gpt-4o-mini"}], "hedge": {"enabled": True}},
            "needs after_ms or after_p95",
        ),
        ({"strategy": "fastest", "members": [{"model": "gpt-4o-mini"}]}, "strategy"),
    ],
)
def test_group_mistakes_are_named(group, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**with_group(**group))


def test_unknown_fallback_reasons_are_rejected():
    with pytest.raises(ValidationError, match="unknown reasons"):
        ResilienceConfig(fallback_on=["UPSTREAM_UNAVAILABLE", "SOMETHING"])


def test_hedge_and_ab_split_load():
    settings = Settings(
        **with_group(
            strategy="ab_split",
            members=[
                {"model": "gpt-4o-mini", "percent": 90},
                {"model": "claude-haiku", "percent": 10},
            ],
            hedge={"enabled": True, "after_p95": True, "after_ms": 800},
        )
    )
    assert settings.groups[0].hedge.after_p95
