"""The circuit breaker's state machine, on a fake clock."""

from __future__ import annotations

from llmproxy.server.config.routing import CircuitBreakerConfig
from llmproxy.server.core.routing.breaker import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**config) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock = Clock()
    changes: list[str] = []
    b = CircuitBreaker(
        CircuitBreakerConfig(**config), clock=clock, on_change=lambda s: changes.append(s.value)
    )
    return b, clock, changes


def test_opens_after_consecutive_failures_and_a_success_resets_the_run():
    b, _, changes = breaker(consecutive_failures=3, min_requests=100)
    for _ in range(2):
        b.record_failure()
    b.record_success()
    for _ in range(2):
        b.record_failure()
    assert b.state is CircuitState.CLOSED
    b.record_failure()
    assert b.state is CircuitState.OPEN and changes == ["open"]
    assert not b.available() and not b.acquire()


def test_opens_on_error_rate_over_the_window_once_enough_requests_were_seen():
    b, _, _ = breaker(consecutive_failures=100, error_rate=0.5, min_requests=10, window_s=10)
    for _ in range(4):
        b.record_failure()
        b.record_success()
    assert b.state is CircuitState.CLOSED  # 50% but only 8 outcomes
    b.record_success()
    b.record_failure()  # 5 of 10
    assert b.state is CircuitState.OPEN


def test_old_outcomes_leave_the_window():
    b, clock, _ = breaker(consecutive_failures=100, error_rate=0.5, min_requests=4, window_s=10)
    for _ in range(3):
        b.record_failure()  # three outcomes: below min_requests
    assert b.error_rate() == 1.0
    clock.now += 11
    assert b.error_rate() == 0.0
    for _ in range(3):
        b.record_success()
    b.record_failure()  # 1 of 4 in the window (4 of 7 had the old ones counted)
    assert b.state is CircuitState.CLOSED


def test_cooldown_then_half_open_admits_limited_probes_and_successes_close_it():
    b, clock, changes = breaker(consecutive_failures=1, cooldown_s=5, half_open_probes=2)
    b.record_failure()
    clock.now += 4.9
    assert not b.available() and not b.acquire()
    clock.now += 0.2
    assert b.available()
    assert b.acquire() and b.acquire()  # two probes
    assert b.state is CircuitState.HALF_OPEN
    assert not b.acquire() and not b.available()  # no third while they run
    b.record_success()
    assert b.state is CircuitState.HALF_OPEN
    b.record_success()
    assert b.state is CircuitState.CLOSED
    assert changes == ["open", "half_open", "closed"]
    assert b.acquire()


def test_a_failed_probe_reopens_for_a_new_cooldown():
    b, clock, changes = breaker(consecutive_failures=1, cooldown_s=5)
    b.record_failure()
    clock.now += 5
    assert b.acquire()
    b.record_failure()
    assert b.state is CircuitState.OPEN
    clock.now += 4
    assert not b.acquire()
    clock.now += 1
    assert b.acquire()
    assert changes == ["open", "half_open", "open", "half_open"]


def test_a_cancelled_probe_frees_its_slot_without_verdict():
    b, clock, _ = breaker(consecutive_failures=1, cooldown_s=1)
    b.record_failure()
    clock.now += 1
    assert b.acquire() and not b.acquire()
    b.release()
    assert b.state is CircuitState.HALF_OPEN
    assert b.acquire()


def test_reconfigure_keeps_state_and_applies_new_thresholds():
    b, _, _ = breaker(consecutive_failures=5)
    for _ in range(3):
        b.record_failure()
    b.reconfigure(CircuitBreakerConfig(consecutive_failures=4))
    b.record_failure()
    assert b.state is CircuitState.OPEN
