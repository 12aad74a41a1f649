"""Each strategy's order and distribution over many requests, and how names expand to plans."""

from __future__ import annotations

from collections import Counter

import pytest

from llmproxy.server.config.routing import GroupConfig
from llmproxy.server.core.catalog import Catalog
from llmproxy.server.core.router import Router
from llmproxy.server.core.routing.strategies import STRATEGIES
from llmproxy.server.errors import ModelNotFoundError, UnavailableError
from tests.routing.tables import catalog_for, names, plan, settings_with


def group(strategy: str, members: list[dict], **extra) -> dict:
    return {"name": "g", "strategy": strategy, "members": members, **extra}


def router_for(strategy: str, members: list[dict], models=None, seed: int = 7, **extra) -> Router:
    models = models or [m["model"] for m in members]
    settings = settings_with(models, groups=[group(strategy, members, **extra)])
    return Router(catalog_for(settings, seed=seed))


def first_choices(router: Router, n: int, **kwargs) -> Counter:
    return Counter(plan(router, "g", **kwargs)[0].name for _ in range(n))


def test_registry_has_every_configurable_strategy():
    assert set(STRATEGIES) == {
        "priority",
        "weighted",
        "round_robin",
        "least_latency",
        "lowest_cost",
        "least_busy",
        "ab_split",
    }


def test_priority_keeps_config_order_and_all_members_as_fallbacks():
    router = router_for("priority", [{"model": "a"}, {"model": "b"}, {"model": "c"}])
    assert {tuple(names(plan(router, "g"))) for _ in range(20)} == {("a", "b", "c")}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_weighted_first_choice_follows_weights_within_tolerance(seed):
    router = router_for(
        "weighted", [{"model": "a", "weight": 3}, {"model": "b", "weight": 1}], seed=seed
    )
    counts = first_choices(router, 8000)
    # Expected 75% / 25%; 3 standard deviations of a binomial over 8000 is about 1.5%.
    assert abs(counts["a"] / 8000 - 0.75) < 0.02
    # Every plan still lists every member, so a failure falls back to the other one.
    assert sorted(names(plan(router, "g"))) == ["a", "b"]


def test_weighted_zero_weight_member_is_only_a_fallback():
    router = router_for("weighted", [{"model": "a", "weight": 0}, {"model": "b", "weight": 2}])
    assert {tuple(names(plan(router, "g"))) for _ in range(200)} == {("b", "a")}


def test_round_robin_is_exact_and_cyclic():
    router = router_for("round_robin", [{"model": "a"}, {"model": "b"}, {"model": "c"}])
    firsts = [plan(router, "g")[0].name for _ in range(300)]
    assert Counter(firsts) == {"a": 100, "b": 100, "c": 100}
    assert firsts[:6] == ["a", "b", "c", "a", "b", "c"]
    assert names(plan(router, "g")) == ["a", "b", "c"]  # rotation keeps the others as fallbacks


def test_least_latency_prefers_the_lowest_moving_average_ttft_and_tries_unmeasured_first():
    router = router_for("least_latency", [{"model": "a"}, {"model": "b"}, {"model": "c"}])
    d = router.catalog.deployments
    for _ in range(5):
        d["a"].stats.record_success(900, 300)
        d["b"].stats.record_success(500, 40)
    assert names(plan(router, "g")) == ["c", "b", "a"]  # c has never been measured
    d["c"].stats.record_success(100, 120)
    assert names(plan(router, "g")) == ["b", "c", "a"]
    # The average moves with new samples: b slows down, c becomes the fastest.
    for _ in range(10):
        d["b"].stats.record_success(2000, 800)
    assert names(plan(router, "g")) == ["c", "a", "b"]


def test_lowest_cost_orders_by_price_and_puts_unpriced_models_last():
    models = [
        {"name": "dear", "price": {"input_per_mtok": 5, "output_per_mtok": 15}},
        {"name": "free-ish"},
        {"name": "cheap", "price": {"input_per_mtok": 0.15, "output_per_mtok": 0.6}},
    ]
    router = router_for(
        "lowest_cost",
        [{"model": "dear"}, {"model": "free-ish"}, {"model": "cheap"}],
        models=models,
    )
    assert names(plan(router, "g")) == ["cheap", "dear", "free-ish"]


def test_least_busy_prefers_fewest_in_flight_and_rotates_ties():
    router = router_for("least_busy", [{"model": "a"}, {"model": "b"}, {"model": "c"}])
    d = router.catalog.deployments
    assert Counter(plan(router, "g")[0].name for _ in range(30)) == {"a": 10, "b": 10, "c": 10}
    d["a"].stats.in_flight, d["b"].stats.in_flight, d["c"].stats.in_flight = 4, 1, 2
    assert names(plan(router, "g")) == ["b", "c", "a"]


AB = [{"model": "control", "percent": 90}, {"model": "variant", "percent": 10}]


def test_ab_split_matches_its_percentages_over_many_callers():
    router = router_for("ab_split", AB)
    counts = first_choices_by_key(router, [f"user-{i}" for i in range(10000)])
    # Keys are hashed, so this is deterministic; the band is the binomial's 3 sigma.
    assert abs(counts["variant"] / 10000 - 0.10) < 0.01


def first_choices_by_key(router: Router, keys: list[str]) -> Counter:
    return Counter(plan(router, "g", route_key=k)[0].name for k in keys)


def test_ab_split_is_sticky_per_route_key():
    router = router_for("ab_split", AB)
    for i in range(200):
        key = f"user-{i}"
        assert len({plan(router, "g", route_key=key)[0].name for _ in range(20)}) == 1
    # The other member stays as the fallback.
    assert sorted(names(plan(router, "g", route_key="user-1"))) == ["control", "variant"]


def test_ab_split_without_a_key_splits_at_random():
    router = router_for("ab_split", AB, seed=11)
    counts = first_choices(router, 10000)
    assert abs(counts["variant"] / 10000 - 0.10) < 0.01


def test_ab_split_assignment_is_independent_per_group():
    """The group name salts the hash, so two experiments do not pick the same users."""
    settings = settings_with(
        ["a", "b"],
        groups=[
            {
                "name": "x",
                "strategy": "ab_split",
                "members": [{"model": "a", "percent": 50}, {"model": "b", "percent": 50}],
            },
            {
                "name": "y",
                "strategy": "ab_split",
                "members": [{"model": "a", "percent": 50}, {"model": "b", "percent": 50}],
            },
        ],
    )
    router = Router(catalog_for(settings))
    keys = [f"k{i}" for i in range(2000)]
    same = sum(plan(router, "x", route_key=k)[0] is plan(router, "y", route_key=k)[0] for k in keys)
    assert 0.4 < same / len(keys) < 0.6


def test_group_fallbacks_follow_members_without_duplicates():
    settings = settings_with(
        ["a", "b", "c", "d"],
        groups=[
            {"name": "inner", "members": [{"model": "c"}, {"model": "a"}]},
            {"name": "g", "members": [{"model": "a"}, {"model": "b"}], "fallback": ["inner", "d"]},
        ],
    )
    router = Router(catalog_for(settings))
    assert names(plan(router, "g")) == ["a", "b", "c", "d"]


def test_fallback_cycles_are_rejected_by_config_validation_and_by_the_table():
    groups = [
        {"name": "x", "members": [{"model": "a"}], "fallback": ["y"]},
        {"name": "y", "members": [{"model": "b"}], "fallback": ["x"]},
    ]
    with pytest.raises(ValueError, match="fallback cycle x -> y -> x"):
        settings_with(["a", "b"], groups=groups)
    # The table checks too, for anything that builds one without Settings.
    valid = catalog_for(settings_with(["a", "b"]))
    with pytest.raises(ValueError, match="fallback cycle x -> y -> x"):
        Catalog(list(valid.deployments.values()), [GroupConfig(**g) for g in groups])


def test_auto_uses_the_task_type_table_then_default_then_task_types():
    settings = settings_with(
        [
            {"name": "a", "task_types": ["code"]},
            {"name": "b", "task_types": ["summarization"]},
            {"name": "c", "task_types": ["code"]},
        ],
        groups=[{"name": "fast", "members": [{"model": "b"}, {"model": "a"}]}],
        routing={"auto": {"summarization": ["fast", "c"], "default": ["c"]}},
    )
    router = Router(catalog_for(settings))
    assert names(plan(router, "auto", task_type="summarization")) == ["b", "a", "c"]
    assert names(plan(router, "auto", task_type="anything")) == ["c"]
    no_table = settings_with(
        [
            {"name": "a", "task_types": ["code"]},
            {"name": "b"},
            {"name": "c", "task_types": ["code"]},
        ]
    )
    router = Router(catalog_for(no_table))
    assert names(plan(router, "auto", task_type="code")) == ["a", "c"]
    assert names(plan(router, "auto", task_type="poetry")) == ["a", "b", "c"]


def test_unknown_names_are_not_found():
    router = Router(catalog_for(settings_with(["a"])))
    with pytest.raises(ModelNotFoundError):
        plan(router, "nope")


def test_open_circuits_are_left_out_of_the_plan_and_all_open_fails_fast():
    router = router_for("priority", [{"model": "a"}, {"model": "b"}])
    d = router.catalog.deployments
    for _ in range(5):
        d["a"].breaker.record_failure()
    assert names(plan(router, "g")) == ["b"]
    for _ in range(5):
        d["b"].breaker.record_failure()
    with pytest.raises(UnavailableError, match="open circuit"):
        plan(router, "g")


def test_the_plan_carries_its_catalog_and_the_groups_hedge_policy():
    router = router_for(
        "priority",
        [{"model": "a"}, {"model": "b"}],
        hedge={"enabled": True, "after_ms": 250},
    )
    p = plan(router, "g")
    assert p.catalog is router.catalog
    assert p.hedge is not None and p.hedge.after_ms == 250
    assert plan(router, "a").hedge is None
