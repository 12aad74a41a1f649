"""Cost arithmetic per model price, and bad price entries rejected when the config loads."""

from __future__ import annotations

import pytest

from llmproxy.server.config import ConfigError, load_settings
from llmproxy.server.config.providers import ModelConfig, Price
from llmproxy.server.core.accounting.pricing import answer_cost, cost_of, estimate_of
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import CacheStatus, Completed, FinishReason, Usage

GPT4O = Price(input_per_mtok=2.5, output_per_mtok=10.0, cached_input_per_mtok=1.25)


def test_cost_is_tokens_times_price_per_million():
    assert cost_of(Usage(1_000_000, 0), GPT4O) == pytest.approx(2.5)
    assert cost_of(Usage(0, 1_000_000), GPT4O) == pytest.approx(10.0)
    # 1200 in, 350 out: 1200 * 2.5e-6 + 350 * 10e-6
    assert cost_of(Usage(1200, 350), GPT4O) == pytest.approx(0.003 + 0.0035)


def test_cached_input_tokens_are_priced_at_the_cached_rate_not_on_top():
    # 1000 prompt tokens of which 800 were served from the provider's prompt cache.
    usage = Usage(input_tokens=1000, output_tokens=100, cached_input_tokens=800)
    expected = (200 * 2.5 + 800 * 1.25 + 100 * 10.0) / 1e6
    assert cost_of(usage, GPT4O) == pytest.approx(expected)


def test_without_a_cached_price_cached_tokens_cost_the_input_rate():
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0)
    usage = Usage(input_tokens=1000, output_tokens=0, cached_input_tokens=600)
    assert cost_of(usage, price) == pytest.approx(1000 * 3.0 / 1e6)


def test_cached_count_above_input_count_is_clamped():
    usage = Usage(input_tokens=100, output_tokens=0, cached_input_tokens=500)
    assert cost_of(usage, GPT4O) == pytest.approx(100 * 1.25 / 1e6)


def test_unpriced_models_cost_nothing():
    assert cost_of(Usage(10_000, 10_000), None) == 0.0
    assert estimate_of(None, 10_000, 10_000) == 0.0


def test_estimate_is_the_undiscounted_worst_case():
    assert estimate_of(GPT4O, 1000, 500) == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1e6)


def _completed(model: str, **kwargs) -> Completed:
    return Completed(
        model=model,
        provider="p",
        usage=kwargs.pop("usage", Usage(1000, 1000)),
        finish_reason=FinishReason.STOP,
        raw_finish_reason="stop",
        response_time_ms=1,
        time_to_first_token_ms=1,
        proxy_overhead_us=1,
        **kwargs,
    )


def test_answer_cost_uses_the_serving_deployments_price_and_zero_for_cache_hits():
    deployment = Deployment(ModelConfig(name="m", provider="p", price=GPT4O), provider=None)  # type: ignore[arg-type]
    assert answer_cost(_completed("m"), [deployment]) == pytest.approx(0.0125)
    assert answer_cost(_completed("m", cache_status=CacheStatus.HIT), [deployment]) == 0.0
    assert answer_cost(_completed("m", cache_status=CacheStatus.SEMANTIC_HIT), [deployment]) == 0
    shared = _completed("m", usage=Usage(1000, 1000, from_cache=True))
    assert answer_cost(shared, [deployment]) == 0.0
    assert answer_cost(_completed("other"), [deployment]) == 0.0


@pytest.mark.parametrize(
    "price",
    [
        {"input_per_mtok": -1},
        {"output_per_mtok": "ten dollars"},
        {"input_per_mtok": float("inf")},
        {"output_per_mtok": float("nan")},
        {"cached_input_per_mtok": -0.5},
        {"input_per_mtoken": 1.0},  # a typo is an error, not a silently free model
    ],
)
def test_a_bad_price_entry_is_a_config_error_at_load(price):
    models = [{"name": "m", "provider": "mock", "price": price}]
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"models": models})
    assert "models.0.price" in str(caught.value)


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ([{"key_id": "a", "limit_usd": 0}], "budgets.0.limit_usd"),
        ([{"key_id": "a", "limit_usd": float("inf")}], "budgets.0.limit_usd"),
        ([{"key_id": "a", "period": "week", "limit_usd": 1}], "budgets.0.period"),
        (
            [{"key_id": "a", "limit_usd": 1}, {"key_id": "a", "limit_usd": 2}],
            "a second day budget for key 'a'",
        ),
    ],
)
def test_bad_budgets_are_config_errors(budgets, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(overrides={"budgets": budgets})
    assert message in str(caught.value)


def test_ledger_and_budget_store_secrets_stay_out_of_reprs():
    settings = load_settings(
        overrides={
            "ledger": {"backend": "postgres", "dsn": "postgresql://u:hunter2@db/x"},
            "budget_store": {"backend": "redis", "redis_url": "redis://:hunter2@r:6379/0"},
        }
    )
    assert "hunter2" not in repr(settings)
    assert settings.ledger.dsn.get_secret_value().endswith("@db/x")
