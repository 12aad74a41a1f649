"""The caller's identity, set by the auth interceptor and read anywhere below it.

Each RPC runs in its own asyncio task, so a value set here belongs to that call only.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from llmproxy.server.config.security import RateLimit

ANONYMOUS = "anonymous"


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling and what they may do; `None` scopes mean "everything"."""

    key_id: str
    models: frozenset[str] | None = None
    rpcs: frozenset[str] | None = None
    rate_limit: RateLimit | None = None
    # How the caller proved who they are: api_key, jwt, client_cert or none.
    method: str = "none"
    # GetUsage shows every key's usage; otherwise only the caller's own.
    sees_all_usage: bool = True

    def may_call_rpc(self, rpc: str) -> bool:
        return self.rpcs is None or rpc in self.rpcs

    def may_use_model(self, name: str) -> bool:
        return self.models is None or name in self.models or "*" in self.models


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS)

_key_id: contextvars.ContextVar[str] = contextvars.ContextVar("llmproxy_key_id", default=ANONYMOUS)
_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "llmproxy_principal", default=ANONYMOUS_PRINCIPAL
)


def current_key_id() -> str:
    return _key_id.get()


def set_key_id(key_id: str) -> contextvars.Token[str]:
    return _key_id.set(key_id)


def current_principal() -> Principal:
    return _principal.get()


def set_principal(principal: Principal) -> None:
    _principal.set(principal)
    _key_id.set(principal.key_id)
