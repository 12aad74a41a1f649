"""API-key pools: spread calls over a provider's keys and rest keys that were refused."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import SecretStr


@dataclass(slots=True)
class _Key:
    secret: SecretStr
    label: str  # safe to log: "key-0", "key-1", ...
    cooldown_until: float = 0.0


class KeyPool:
    """Round-robin over keys, skipping those cooling down after a 429 or 401.

    Keys stay SecretStr until the moment a request header is built, so they
    never show in reprs, logs or error messages; callers log `label` instead.
    """

    def __init__(self, keys: list[SecretStr], *, clock=time.monotonic) -> None:
        self._keys = [_Key(k, f"key-{i}") for i, k in enumerate(keys)]
        self._next = 0
        self._clock = clock

    def __len__(self) -> int:
        return len(self._keys)

    def acquire(self) -> tuple[str, str] | None:
        """Return (secret, label) of the next usable key; None when the pool is empty.

        When every key is cooling down, the one that recovers first is used
        rather than failing the call outright.
        """
        if not self._keys:
            return None
        now = self._clock()
        n = len(self._keys)
        for i in range(n):
            key = self._keys[(self._next + i) % n]
            if key.cooldown_until <= now:
                self._next = (self._next + i + 1) % n
                return key.secret.get_secret_value(), key.label
        key = min(self._keys, key=lambda k: k.cooldown_until)
        return key.secret.get_secret_value(), key.label

    def cool_down(self, label: str, seconds: float) -> None:
        for key in self._keys:
            if key.label == label:
                key.cooldown_until = max(key.cooldown_until, self._clock() + seconds)
