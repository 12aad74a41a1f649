"""The root of the settings tree and the checks that span sections."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llmproxy.server.config.caching import (
    BudgetConfig,
    BudgetStoreConfig,
    CacheConfig,
    LedgerConfig,
)
from llmproxy.server.config.observability import LoggingConfig, TracingConfig
from llmproxy.server.config.providers import ModelConfig, ProviderConfig
from llmproxy.server.config.routing import (
    GroupConfig,
    ResilienceConfig,
    RoutingConfig,
    fallback_cycles,
)
from llmproxy.server.config.security import AuthConfig, RateLimitsConfig, TlsConfig
from llmproxy.server.config.server import HttpClientConfig, ServerConfig


class Settings(BaseSettings):
    """Validated once at start, then passed down; never read from os.environ deeper in.

    Sources, highest first: LLMPROXY_* environment variables (nested with `__`,
    e.g. LLMPROXY_SERVER__GRPC_PORT), then the YAML file.
    """

    model_config = SettingsConfigDict(
        env_prefix="LLMPROXY_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    server: ServerConfig = ServerConfig()
    http_client: HttpClientConfig = HttpClientConfig()
    providers: list[ProviderConfig] = Field(default_factory=list)
    models: list[ModelConfig] = Field(default_factory=list)
    groups: list[GroupConfig] = Field(default_factory=list)
    routing: RoutingConfig = RoutingConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    auth: AuthConfig = AuthConfig()
    rate_limits: RateLimitsConfig = RateLimitsConfig()
    tls: TlsConfig | None = None
    cache: CacheConfig = CacheConfig()
    ledger: LedgerConfig = LedgerConfig()
    budgets: list[BudgetConfig] = Field(default_factory=list)
    budget_store: BudgetStoreConfig = BudgetStoreConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def check_references(self) -> Self:
        errors: list[str] = []
        providers = _unique("providers", [p.name for p in self.providers], errors)
        models = _unique("models", [m.name for m in self.models], errors)
        groups = _unique("groups", [g.name for g in self.groups], errors)
        for i, m in enumerate(self.models):
            if m.provider not in providers:
                errors.append(f"models[{i}].provider: unknown provider {m.provider!r}")
        for overlap in sorted(models & groups):
            errors.append(f"groups: {overlap!r} is both a model and a group name")
        for i, g in enumerate(self.groups):
            for j, member in enumerate(g.members):
                if member.model not in models:
                    errors.append(f"groups[{i}].members[{j}].model: unknown model {member.model!r}")
            for j, name in enumerate(g.fallback):
                if name not in models and name not in groups:
                    errors.append(f"groups[{i}].fallback[{j}]: unknown model or group {name!r}")
        for task, names in self.routing.auto.items():
            for j, name in enumerate(names):
                if name not in models and name not in groups:
                    errors.append(f"routing.auto.{task}[{j}]: unknown model or group {name!r}")
        if not errors:
            errors.extend(fallback_cycles(self.groups))
        budgets: set[tuple[str, str]] = set()
        for i, b in enumerate(self.budgets):
            if (b.key_id, b.period) in budgets:
                errors.append(f"budgets[{i}]: a second {b.period} budget for key {b.key_id!r}")
            budgets.add((b.key_id, b.period))
        if errors:
            raise ValueError("; ".join(errors))
        return self


def _unique(section: str, names: list[str], errors: list[str]) -> set[str]:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            errors.append(f"{section}[{i}].name: duplicate name {name!r}")
        seen.add(name)
    return seen
