"""API-key pools: spread calls over a provider's keys and rest keys that were refused."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from pydantic import SecretStr

# Longest rest a key gets, whatever a retry-after header asks for.
MAX_COOLDOWN_S = 3600.0


@dataclass(slots=True)
class _Key:
    secret: SecretStr
    label: str  # safe to log: "key-0", "key-1", ...
    cooldown_until: float = 0.0


class KeyPool:
    """Round-robin over keys, skipping those cooling down after a 429 or 401.

    Keys stay SecretStr until the moment a request header is built, so they
    never show in reprs, logs or error messages; callers log `label` instead.
    A cooldown only steers: when every key rests, the one that recovers first
    is still used rather than failing the call outright.
    """

    def __init__(
        self, keys: list[SecretStr], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._keys = [_Key(k, f"key-{i}") for i, k in enumerate(keys)]
        self._next = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"KeyPool({len(self._keys)} keys)"

    def acquire(self) -> tuple[str, str] | None:
        """Return (secret, label) of the next usable key; None when the pool is empty."""
        if not self._keys:
            return None
        lease = self.acquire_ready()
        if lease is not None:
            return lease
        key = min(self._keys, key=lambda k: k.cooldown_until)
        return key.secret.get_secret_value(), key.label

    def acquire_ready(self, exclude: Collection[str] = ()) -> tuple[str, str] | None:
        """The next key that is not cooling down and not in `exclude`, or None.

        Used to fail over to another key within one call after a key was refused.
        """
        now = self._clock()
        n = len(self._keys)
        for i in range(n):
            key = self._keys[(self._next + i) % n]
            if key.cooldown_until <= now and key.label not in exclude:
                self._next = (self._next + i + 1) % n
                return key.secret.get_secret_value(), key.label
        return None

    def cool_down(self, label: str, seconds: float) -> None:
        until = self._clock() + min(max(seconds, 0.0), MAX_COOLDOWN_S)
        for key in self._keys:
            if key.label == label:
                key.cooldown_until = max(key.cooldown_until, until)

    def cooling(self) -> list[str]:
        """Labels of the keys resting now (for logs and status; never the keys)."""
        now = self._clock()
        return [k.label for k in self._keys if k.cooldown_until > now]
