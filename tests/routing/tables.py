"""Routing tables built in memory (mock provider, seeded randomness) for unit tests."""

from __future__ import annotations

import random
from typing import Any

from llmproxy.server.config import Settings
from llmproxy.server.core.catalog import Catalog, build_deployments
from llmproxy.server.core.router import Plan, Router
from llmproxy.server.domain import CallContext, Message, QueryInput, Role
from llmproxy.server.providers.base import ProviderSettings
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.mock import MockProvider


def settings_with(models: list[str | dict[str, Any]], **sections: Any) -> Settings:
    specs = [{"name": m} if isinstance(m, str) else dict(m) for m in models]
    for spec in specs:
        spec.setdefault("provider", "mock")
    return Settings(providers=[{"name": "mock", "type": "mock"}], models=specs, **sections)


def catalog_for(settings: Settings, *, seed: int = 7) -> Catalog:
    provider = MockProvider(ProviderSettings(name="mock", type="mock"), None, KeyPool([]))
    deployments = build_deployments(settings.models, {"mock": provider}, settings.resilience)
    return Catalog(
        deployments,
        settings.groups,
        settings.routing,
        settings.resilience,
        rng=random.Random(seed),
    )


def plan(router: Router, model: str, *, route_key: str = "", task_type: str = "") -> Plan:
    query = QueryInput((Message(Role.USER, "hi"),), model=model, task_type=task_type)
    return router.plan(query, CallContext(route_key=route_key))


def names(p: list) -> list[str]:
    return [d.name for d in p]
