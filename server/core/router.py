"""Turns the name a caller asked for into an ordered list of deployments to try."""

from __future__ import annotations

from llmproxy.server.core.catalog import Catalog
from llmproxy.server.core.deployments import Deployment
from llmproxy.server.domain import CallContext, QueryInput
from llmproxy.server.errors import ModelNotFoundError


class Router:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def plan(self, query: QueryInput, ctx: CallContext) -> list[Deployment]:
        """Candidates in the order they should be tried; the first is the preferred one."""
        name = query.model or "auto"
        if name == "auto":
            names = self.catalog.routing.auto.get(query.task_type) or self.catalog.routing.auto.get(
                "default"
            )
            if names:
                return self._dedupe(d for n in names for d in self._expand(n))
            return self.catalog.for_task(query.task_type)
        if name in self.catalog.deployments or name in self.catalog.groups:
            return self._dedupe(self._expand(name))
        raise ModelNotFoundError(name, self.catalog.known_names())

    def _expand(self, name: str) -> list[Deployment]:
        if (deployment := self.catalog.deployments.get(name)) is not None:
            return [deployment]
        group = self.catalog.groups[name]
        members = [self.catalog.deployments[m.model] for m in group.members]
        return members + [d for f in group.fallback for d in self._expand(f)]

    @staticmethod
    def _dedupe(deployments) -> list[Deployment]:
        seen: set[int] = set()
        out = []
        for d in deployments:
            if id(d) not in seen:
                seen.add(id(d))
                out.append(d)
        return out
