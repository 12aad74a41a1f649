"""Everything a caller can name: models, groups, and the auto-routing table."""

from __future__ import annotations

from llmproxy.server.config.routing import GroupConfig, RoutingConfig
from llmproxy.server.core.deployments import Deployment


class Catalog:
    def __init__(
        self,
        deployments: list[Deployment],
        groups: list[GroupConfig] | None = None,
        routing: RoutingConfig | None = None,
    ) -> None:
        self.deployments = {d.name: d for d in deployments}
        self.groups = {g.name: g for g in groups or []}
        self.routing = routing or RoutingConfig()

    def known_names(self) -> list[str]:
        return [*self.deployments, *self.groups, "auto"]

    def for_task(self, task_type: str) -> list[Deployment]:
        """Models that list this task type, in config order; all models when none do."""
        matching = [d for d in self.deployments.values() if task_type in d.config.task_types]
        return matching or list(self.deployments.values())
