"""Authentication, transport security and rate limits."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, SecretStr

from llmproxy.server.config.base import Section


class RateLimit(Section):
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)


class KeyScopes(Section):
    # Empty means "all".
    models: list[str] = Field(default_factory=list)
    rpcs: list[str] = Field(default_factory=list)


class ApiKeyConfig(Section):
    id: str = Field(min_length=1)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scopes: KeyScopes = KeyScopes()
    expires_at: datetime | None = None
    rate_limit: RateLimit | None = None


class JwtConfig(Section):
    issuer: str | None = None
    audience: str | None = None
    jwks_file: str | None = None
    hs256_secret: SecretStr | None = None
    scope_claim: str = "scope"


class AuthConfig(Section):
    enabled: bool = False
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    jwt: JwtConfig | None = None
    # Health and reflection stay open so probes and `grpcurl list` work.
    public_services: list[str] = Field(
        default_factory=lambda: [
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
            "grpc.reflection.v1.ServerReflection",
        ]
    )


class RateLimitsConfig(Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_backend_failure: Literal["open", "closed"] = "open"
    default: RateLimit = RateLimit()


class TlsConfig(Section):
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    require_client_cert: bool = False
