"""Authentication, transport security and rate limits."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator

from llmproxy.server.config.base import Section


class RateLimit(Section):
    """Token buckets: each holds one minute's worth and refills continuously."""

    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)

    @property
    def is_set(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class KeyScopes(Section):
    # Empty means "all". `models` lists model or group names ("auto" for auto routing,
    # "*" for everything); `rpcs` lists LLMProxy method names (Query, Status, ...).
    models: list[str] = Field(default_factory=list)
    rpcs: list[str] = Field(default_factory=list)
    # GetUsage: `own` shows only this key's usage, `all` every key's (for admins).
    usage: Literal["own", "all"] = "own"


class ApiKeyConfig(Section):
    id: str = Field(min_length=1)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    scopes: KeyScopes = KeyScopes()
    expires_at: datetime | None = None
    rate_limit: RateLimit | None = None


class JwtConfig(Section):
    """Bearer JWTs: HS256 with `hs256_secret`, RS256/ES256 with keys from a local JWKS file.

    The scope claim holds space-separated (or a list of) `model:<name>` and
    `rpc:<Name>` entries, mapped to the same scopes as an API key's; other entries
    are ignored, and no entry of a kind means "all" of that kind.
    """

    issuer: str | None = None
    audience: str | None = None
    jwks_file: str | None = None
    hs256_secret: SecretStr | None = None
    scope_claim: str = "scope"
    # The claim that names the caller in logs, metrics and rate limits.
    key_id_claim: str = "sub"
    leeway_s: float = Field(30, ge=0)

    @model_validator(mode="after")
    def check_keys(self) -> Self:
        if self.jwks_file is None and self.hs256_secret is None:
            raise ValueError("auth.jwt needs jwks_file (RS256/ES256) or hs256_secret (HS256)")
        return self


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

    @model_validator(mode="after")
    def check_unique_ids(self) -> Self:
        ids = [k.id for k in self.api_keys]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"auth.api_keys: duplicate id(s) {', '.join(duplicates)}")
        return self


class RateLimitsConfig(Section):
    """Per-key limits (`default`, or a key's own `rate_limit`) and per-model limits.

    `models` limits each key's use of one model or group (bucket per key and model).
    With the redis backend every replica shares the same buckets. When the backend
    cannot answer, `on_backend_failure: open` serves the request unlimited and
    `closed` refuses it with UNAVAILABLE; either way a warning is logged and
    llmproxy_rate_limit_backend_errors_total{policy} counts it.
    """

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    on_backend_failure: Literal["open", "closed"] = "open"
    default: RateLimit = RateLimit()
    models: dict[str, RateLimit] = Field(default_factory=dict)
    # No braces: the key id is the Redis Cluster hash tag.
    key_prefix: str = Field("llmproxy:rl:", pattern=r"^[^{}]*$")
    # A Redis call slower than this counts as a backend failure.
    redis_timeout_s: float = Field(0.25, gt=0)
    # After a failure, skip Redis (apply the failure policy) for this long.
    backend_retry_s: float = Field(1.0, ge=0)

    @property
    def any_limit(self) -> bool:
        return self.default.is_set or any(m.is_set for m in self.models.values())


class TlsConfig(Section):
    """TLS on the gRPC port; cert and key files are re-read when they change on disk.

    `client_ca_file` turns on mTLS: every client must present a certificate signed
    by that CA. With `client_cert_identity`, the certificate's common name (or first
    SAN) is the caller's key id when no API key or token is sent; an `auth.api_keys`
    entry with that id lends it its scopes and rate limit.
    """

    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None
    require_client_cert: bool = False
    client_cert_identity: bool = False
    # How often, at most, a handshake checks the files for changes.
    reload_check_s: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def check_files(self) -> Self:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("tls.cert_file and tls.key_file go together")
        if (self.require_client_cert or self.client_cert_identity) and not self.client_ca_file:
            raise ValueError("tls.client_ca_file is required to verify client certificates")
        return self

    @property
    def mutual(self) -> bool:
        # gRPC Python cannot ask for an optional client certificate: a CA means required.
        return bool(self.client_ca_file)
