"""The caller's identity, set by the auth interceptor and read anywhere below it."""

from __future__ import annotations

import contextvars

ANONYMOUS = "anonymous"

_key_id: contextvars.ContextVar[str] = contextvars.ContextVar("llmproxy_key_id", default=ANONYMOUS)


def current_key_id() -> str:
    return _key_id.get()


def set_key_id(key_id: str) -> contextvars.Token[str]:
    return _key_id.set(key_id)
