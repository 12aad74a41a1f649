"""Turns token counts into US dollars with each model's configured price."""

from __future__ import annotations

from collections.abc import Sequence

from llmproxy.server.config.providers import Price
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import CacheStatus, Completed, Usage

PER = 1_000_000  # prices are per million tokens
_HITS = (CacheStatus.HIT, CacheStatus.SEMANTIC_HIT)


def cost_of(usage: Usage, price: Price | None) -> float:
    """USD for `usage`; cached input tokens (part of input_tokens) use the cached price.

    Providers report cached tokens inside the input count (OpenAI's
    prompt_tokens_details.cached_tokens), so they are priced instead of, not on
    top of, the normal input rate. No cached price configured: full input rate.
    """
    if price is None:
        return 0.0
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    cached_rate = price.input_per_mtok
    if price.cached_input_per_mtok is not None:
        cached_rate = price.cached_input_per_mtok
    return (
        (usage.input_tokens - cached) * price.input_per_mtok
        + cached * cached_rate
        + usage.output_tokens * price.output_per_mtok
    ) / PER


def estimate_of(price: Price | None, input_tokens: int, output_tokens: int) -> float:
    """The most a call can cost before it is made: no cache discount assumed."""
    if price is None:
        return 0.0
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / PER


def answer_cost(event: Completed, candidates: Sequence[Deployment]) -> float:
    """What the answer cost us: zero when it came from the gateway's cache.

    The price comes from the serving deployment in this request's own plan, so a
    config reload mid-request prices it as it was routed.
    """
    if event.usage.from_cache or event.cache_status in _HITS:
        return 0.0
    for deployment in candidates:
        if deployment.name == event.model:
            return cost_of(event.usage, deployment.config.price)
    return 0.0
