"""Turns the name a caller asked for into an ordered list of deployments to try."""

from __future__ import annotations

from llmproxy.server.config.routing import HedgeConfig, ResilienceConfig
from llmproxy.server.core.catalog import Catalog
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import CallContext, QueryInput
from llmproxy.server.errors import UnavailableError


class Plan(list[Deployment]):
    """Candidates in the order to try them, plus how to run them.

    A list, so stages that only need the candidates (cache, accounting) see one;
    it pins the Catalog it came from, so a reload mid-request changes nothing.
    """

    __slots__ = ("catalog", "hedge", "resilience")

    def __init__(self, catalog: Catalog | None = None, hedge: HedgeConfig | None = None) -> None:
        super().__init__()
        self.catalog = catalog
        self.hedge = hedge
        self.resilience = catalog.resilience if catalog is not None else ResilienceConfig()


class Router:
    def __init__(self, catalog: Catalog) -> None:
        # The one reference a config reload swaps.
        self.catalog = catalog

    def plan(self, query: QueryInput, ctx: CallContext) -> Plan:
        """Candidates in the order they should be tried; the first is the preferred one.

        Deployments whose circuit is open are left out here, before anything is
        spent on them; when that leaves nothing, the request fails at once.
        """
        catalog = self.catalog
        name = query.model or "auto"
        route = catalog.route(name, query.task_type)
        key = query.route_key or ctx.route_key
        plan = Plan(catalog, route.hedge)
        if len(route.steps) == 1:
            plan.extend(d for d in route.steps[0].order(key) if d.breaker.available())
        else:
            seen: set[int] = set()
            for step in route.steps:
                for d in step.order(key):
                    if id(d) not in seen:
                        seen.add(id(d))
                        if d.breaker.available():
                            plan.append(d)
        if not plan:
            raise UnavailableError(
                f"every deployment that can serve {name!r} has an open circuit breaker"
            )
        return plan
