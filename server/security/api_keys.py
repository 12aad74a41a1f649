"""Caller API keys: generated once, stored only as sha256 hashes, checked for expiry and scopes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from llmproxy.server.config.security import ApiKeyConfig
from llmproxy.server.errors import UnauthenticatedError
from llmproxy.server.interceptors.identity import Principal

KEY_PREFIX = "llmp_"
HASH_PREFIX = "sha256:"


def generate_key() -> str:
    """A new random key: 256 bits, URL-safe, recognisable by its prefix (for secret scanners)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form the config stores: `sha256:<hex>`. A fast hash is enough for 256-bit keys."""
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def principal_for(config: ApiKeyConfig, method: str) -> Principal:
    return Principal(
        key_id=config.id,
        models=frozenset(config.scopes.models) or None,
        rpcs=frozenset(config.scopes.rpcs) or None,
        rate_limit=config.rate_limit,
        method=method,
        sees_all_usage=config.scopes.usage == "all",
    )


def unauthenticated(message: str, cause: str) -> UnauthenticatedError:
    return UnauthenticatedError(message, metadata={"cause": cause})


@dataclass(slots=True, frozen=True)
class StoredKey:
    digest: bytes
    principal: Principal
    # Seconds since the epoch, None for a key that never expires.
    expires_at: float | None


class KeyStore:
    """Looks keys up by the digest of what the caller sent; the raw key is never kept."""

    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self._by_digest: dict[bytes, StoredKey] = {}
        self._by_id: dict[str, StoredKey] = {}
        for config in keys:
            digest = bytes.fromhex(config.hash.removeprefix(HASH_PREFIX))
            expires = config.expires_at.timestamp() if config.expires_at else None
            stored = StoredKey(digest, principal_for(config, "api_key"), expires)
            self._by_digest[digest] = stored
            self._by_id[config.id] = stored

    def __len__(self) -> int:
        return len(self._by_digest)

    def find(self, key: str) -> StoredKey | None:
        digest = hashlib.sha256(key.encode()).digest()
        stored = self._by_digest.get(digest)
        # The dict lookup already matched; compare_digest keeps the final check constant-time.
        if stored is None or not hmac.compare_digest(stored.digest, digest):
            return None
        return stored

    def by_id(self, key_id: str) -> StoredKey | None:
        return self._by_id.get(key_id)

    @staticmethod
    def check_expiry(stored: StoredKey, now: float) -> Principal:
        if stored.expires_at is not None and now >= stored.expires_at:
            raise unauthenticated(f"API key {stored.principal.key_id!r} has expired", "expired_key")
        return stored.principal
