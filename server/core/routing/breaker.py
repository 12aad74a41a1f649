"""The circuit breaker of one deployment: closed, open, half-open.

It opens on a run of consecutive failures or on the error rate over a sliding
window, stays open for a cooldown (routing skips it without calling it), then
lets a few trial requests through (half-open); enough successes close it,
one failure opens it again.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable

from llmproxy.server.config.routing import CircuitBreakerConfig


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Per-deployment state; every method is O(1) amortised and never awaits."""

    __slots__ = (
        "_buckets",
        "_clock",
        "_failures",
        "_on_change",
        "_slot_s",
        "_total",
        "config",
        "consecutive",
        "open_until",
        "probe_successes",
        "probes",
        "state",
    )

    def __init__(
        self,
        config: CircuitBreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self.config = config
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.open_until = 0.0
        self.probes = 0  # trial requests in flight while half-open
        self.probe_successes = 0
        # The window in ~20 time slots of [slot, outcomes, failures]: bounded memory at any rate.
        self._buckets: deque[list[int]] = deque()
        self._slot_s = config.window_s / 20
        self._total = 0
        self._failures = 0
        self._clock = clock
        self._on_change = on_change

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """A reload changed the settings: keep the state, restart the window if it changed."""
        if config == self.config:
            return
        if config.window_s != self.config.window_s:
            self._buckets.clear()
            self._total = self._failures = 0
            self._slot_s = config.window_s / 20
        self.config = config

    def available(self) -> bool:
        """Whether routing should consider this deployment at all (no side effects)."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            return self._clock() >= self.open_until
        return self.probes < self.config.half_open_probes

    def acquire(self) -> bool:
        """Reserve the right to call; after True, exactly one record_* or release must follow."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() < self.open_until:
                return False
            self._set(CircuitState.HALF_OPEN)
            self.probes = self.probe_successes = 0
        if self.probes >= self.config.half_open_probes:
            return False
        self.probes += 1
        return True

    def release(self) -> None:
        """The call ended without saying anything about health (cancelled, caller's error)."""
        if self.state is CircuitState.HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def record_success(self) -> None:
        self.consecutive = 0
        self._remember(True)
        if self.state is CircuitState.HALF_OPEN:
            self.probes = max(self.probes - 1, 0)
            self.probe_successes += 1
            if self.probe_successes >= self.config.half_open_probes:
                self._buckets.clear()
                self._total = self._failures = 0
                self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self.consecutive += 1
        self._remember(False)
        # One failed probe reopens at once; a closed circuit opens on its thresholds.
        if self.state is CircuitState.HALF_OPEN or (
            self.state is CircuitState.CLOSED and self._should_open()
        ):
            self._open()

    def error_rate(self) -> float:
        """Failures over outcomes in the last `window_s` seconds."""
        self._trim(self._clock())
        return self._failures / self._total if self._total else 0.0

    def _should_open(self) -> bool:
        cfg = self.config
        if self.consecutive >= cfg.consecutive_failures:
            return True
        total = self._total
        return total >= cfg.min_requests and self._failures >= cfg.error_rate * total

    def _open(self) -> None:
        self.open_until = self._clock() + self.config.cooldown_s
        self.probes = self.probe_successes = 0
        self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is not self.state:
            self.state = state
            if self._on_change is not None:
                self._on_change(state)

    def _remember(self, ok: bool) -> None:
        now = self._clock()
        slot = int(now / self._slot_s)
        buckets = self._buckets
        if buckets and buckets[-1][0] == slot:
            bucket = buckets[-1]
        else:
            bucket = [slot, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        self._total += 1
        if not ok:
            bucket[2] += 1
            self._failures += 1
        self._trim(now)

    def _trim(self, now: float) -> None:
        oldest = int((now - self.config.window_s) / self._slot_s)
        buckets = self._buckets
        while buckets and buckets[0][0] < oldest:
            _, total, failures = buckets.popleft()
            self._total -= total
            self._failures -= failures
