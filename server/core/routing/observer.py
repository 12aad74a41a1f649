"""What routing reports as it works (upstream errors, retries, fallbacks, breaker changes).

The core only knows this protocol; the composition root passes the App's
Metrics, which implements it, so core stays free of prometheus. The default
does nothing.
"""

from __future__ import annotations

from typing import Protocol


class RoutingObserver(Protocol):
    def upstream_error(self, provider: str, model: str, reason: str) -> None:
        """An attempt failed with `reason` (before or after its first token)."""

    def retry(self, provider: str, model: str) -> None:
        """The same deployment is tried again after a retryable error."""

    def fallback(self, from_model: str, to_model: str) -> None:
        """`from_model` failed before its first token and `to_model` is tried next."""

    def circuit(self, model: str, provider: str, state: str) -> None:
        """The circuit breaker of `model` moved to `state` (closed, half_open, open)."""

    def hedge(self, provider: str, model: str) -> None:
        """A hedge attempt started on `model` because the first token was late."""


class NullObserver:
    def upstream_error(self, provider: str, model: str, reason: str) -> None:
        pass

    def retry(self, provider: str, model: str) -> None:
        pass

    def fallback(self, from_model: str, to_model: str) -> None:
        pass

    def circuit(self, model: str, provider: str, state: str) -> None:
        pass

    def hedge(self, provider: str, model: str) -> None:
        pass


NULL_OBSERVER = NullObserver()
