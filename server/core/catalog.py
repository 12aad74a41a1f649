"""Everything a caller can name (models, groups, `auto`), resolved once per config load.

A Catalog is one immutable routing table: deployments, each group's strategy,
fallback chains flattened into routes, and the resilience settings. A reload
builds a new Catalog and swaps one reference; requests already running keep
the one they started with.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmproxy.server.config.providers import ModelConfig
from llmproxy.server.config.routing import GroupConfig, HedgeConfig, ResilienceConfig, RoutingConfig
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.core.routing.breaker import CircuitBreaker, CircuitState
from llmproxy.server.core.routing.observer import NULL_OBSERVER, RoutingObserver
from llmproxy.server.core.routing.strategies import Member, Strategy, build_strategy
from llmproxy.server.errors import ModelNotFoundError
from llmproxy.server.providers.base import Provider


class FixedOrder:
    """A step of a route that is always the same list (a plain model name)."""

    __slots__ = ("deployments",)

    def __init__(self, deployments: list[Deployment]) -> None:
        self.deployments = deployments

    def order(self, route_key: str) -> list[Deployment]:
        return self.deployments


Step = Strategy | FixedOrder


@dataclass(slots=True, frozen=True)
class Route:
    """What a name expands to: ordered steps (a group's strategy, then its fallbacks)."""

    steps: tuple[Step, ...]
    # The hedging policy of the group the route starts with, when it opted in.
    hedge: HedgeConfig | None = None


class Catalog:
    def __init__(
        self,
        deployments: list[Deployment],
        groups: list[GroupConfig] | None = None,
        routing: RoutingConfig | None = None,
        resilience: ResilienceConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.deployments = {d.name: d for d in deployments}
        self.groups = {g.name: g for g in groups or []}
        self.routing = routing or RoutingConfig()
        self.resilience = resilience or ResilienceConfig()
        self.rng = rng or random.Random()
        # Executions running on this table; a reload closes retired clients once it is 0.
        self.active = 0
        self.strategies: dict[str, Strategy] = {
            g.name: build_strategy(
                g.strategy,
                g.name,
                [Member(self.deployments[m.model], m.weight, m.percent) for m in g.members],
                self.rng,
            )
            for g in self.groups.values()
        }
        self._routes = {name: self._route([name]) for name in (*self.deployments, *self.groups)}
        self._auto = {task: self._route(names) for task, names in self.routing.auto.items()}
        self._by_task: dict[str, Route] = {}
        self._everything = Route((FixedOrder(list(self.deployments.values())),))

    def known_names(self) -> list[str]:
        return [*self.deployments, *self.groups, "auto"]

    def route(self, name: str, task_type: str) -> Route:
        """The route for a requested name; `auto` goes by task type (then `default`)."""
        if name == "auto":
            return self._auto.get(task_type) or self._auto.get("default") or self._task(task_type)
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFoundError(name, self.known_names())
        return route

    def for_task(self, task_type: str) -> list[Deployment]:
        """Models that list this task type, in config order; all models when none do."""
        matching = [d for d in self.deployments.values() if task_type in d.config.task_types]
        return matching or list(self.deployments.values())

    def _task(self, task_type: str) -> Route:
        route = self._by_task.get(task_type)
        if route is None:
            matching = self.for_task(task_type)
            if len(matching) == len(self.deployments):
                return self._everything  # unknown task types are not cached: callers pick them
            route = self._by_task[task_type] = Route((FixedOrder(matching),))
        return route

    def _route(self, names: Sequence[str]) -> Route:
        steps: list[Step] = []
        for name in names:
            self._expand(name, steps, ())
        first = self.groups.get(names[0]) if names else None
        hedge = first.hedge if first is not None and first.hedge.enabled else None
        return Route(tuple(steps), hedge)

    def _expand(self, name: str, steps: list[Step], path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"groups: fallback cycle {' -> '.join((*path, name))}")
        if (deployment := self.deployments.get(name)) is not None:
            steps.append(FixedOrder([deployment]))
            return
        group = self.groups[name]
        steps.append(self.strategies[name])
        for fallback in group.fallback:
            self._expand(fallback, steps, (*path, name))


def build_deployments(
    models: Sequence[ModelConfig],
    providers: Mapping[str, Provider],
    resilience: ResilienceConfig,
    *,
    previous: Catalog | None = None,
    observer: RoutingObserver = NULL_OBSERVER,
) -> list[Deployment]:
    """One Deployment per model; an unchanged model on the same provider object keeps its
    Deployment, so its observed latency and circuit state survive a reload."""
    old = previous.deployments if previous is not None else {}
    out = []
    for model in models:
        provider = providers[model.provider]
        kept = old.get(model.name)
        if kept is not None and kept.config == model and kept.provider is provider:
            kept.breaker.reconfigure(resilience.circuit_breaker)
            out.append(kept)
            continue
        breaker = _breaker(model, provider, resilience, observer)
        out.append(Deployment(model, provider, breaker=breaker))
    return out


def _breaker(
    model: ModelConfig, provider: Provider, resilience: ResilienceConfig, observer: RoutingObserver
) -> CircuitBreaker:
    def changed(state: CircuitState) -> None:
        observer.circuit(model.name, provider.name, state.value)

    return CircuitBreaker(resilience.circuit_breaker, on_change=changed)
