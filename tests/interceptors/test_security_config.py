"""The auth, TLS and rate-limit config sections refuse what cannot work, naming the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmproxy.server.config.security import AuthConfig, JwtConfig, RateLimitsConfig, TlsConfig
from llmproxy.server.security.api_keys import hash_key


@pytest.mark.parametrize(
    ("section", "data", "message"),
    [
        (JwtConfig, {"issuer": "x"}, "needs jwks_file"),
        (TlsConfig, {"cert_file": "a.pem"}, "go together"),
        (TlsConfig, {"cert_file": "a", "key_file": "b", "require_client_cert": True}, "client_ca"),
        (RateLimitsConfig, {"key_prefix": "rl:{x}:"}, "key_prefix"),
        (
            AuthConfig,
            {
                "api_keys": [
                    {"id": "a", "hash": hash_key("k1")},
                    {"id": "a", "hash": hash_key("k2")},
                ]
            },
            "duplicate id",
        ),
        (AuthConfig, {"api_keys": [{"id": "a", "hash": "plain-text-key"}]}, "hash"),
    ],
)
def test_invalid_sections_are_refused(section, data, message):
    with pytest.raises(ValidationError, match=message):
        section(**data)


def test_the_issue_config_shape_loads():
    auth = AuthConfig(
        enabled=True,
        api_keys=[
            {
                "id": "team-a",
                "hash": hash_key("raw-key-123"),
                "scopes": {"models": ["fast", "gpt-4o-mini"], "rpcs": ["Query", "Status"]},
                "expires_at": "2027-01-01T00:00:00Z",
                "rate_limit": {"requests_per_minute": 60, "tokens_per_minute": 100000},
            }
        ],
        jwt={
            "issuer": "https://issuer.example",
            "audience": "llmproxy",
            "hs256_secret": "jwt-secret-456",
        },
    )
    assert "raw-key-123" not in repr(auth) and "jwt-secret-456" not in repr(auth)
    limits = RateLimitsConfig(
        backend="redis",
        redis_url="redis://127.0.0.1:6379/0",
        on_backend_failure="closed",
        default={"requests_per_minute": 600, "tokens_per_minute": 1000000},
    )
    assert limits.any_limit
