"""Routing strategies: each orders a group's members for one request, chosen by name.

A strategy returns every member, best first; the executor tries them in that
order, so the tail is the group's own fallback order. Strategies never await
and never allocate more than the list they return: they run on every request.
"""

from __future__ import annotations

import abc
import hashlib
import random
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from llmproxy.server.core.deployments import Deployment


@dataclass(slots=True, frozen=True)
class Member:
    deployment: Deployment
    weight: float = 1.0
    percent: float | None = None


class Strategy(abc.ABC):
    """Per-group routing state (counters, precomputed orders), built once per config load."""

    def __init__(self, name: str, members: list[Member], rng: random.Random) -> None:
        self.name = name
        self.members = members
        self.deployments = [m.deployment for m in members]
        self.rng = rng

    @abc.abstractmethod
    def order(self, route_key: str) -> list[Deployment]:
        """All members, the preferred one first; the caller must not mutate the list."""


class PriorityStrategy(Strategy):
    """Config order: the first member serves, the others are its fallbacks."""

    def order(self, route_key: str) -> list[Deployment]:
        return self.deployments


class WeightedStrategy(Strategy):
    """The first choice is drawn in proportion to `weight`; the rest follow in config order."""

    def __init__(self, name: str, members: list[Member], rng: random.Random) -> None:
        super().__init__(name, members, rng)
        self._cumulative = list(accumulate(m.weight for m in members))
        self._total = self._cumulative[-1]
        # Rotations precomputed so a request only picks one.
        self._orders = [self._rotated(i) for i in range(len(members))]

    def _rotated(self, first: int) -> list[Deployment]:
        d = self.deployments
        return [d[first], *d[:first], *d[first + 1 :]]

    def order(self, route_key: str) -> list[Deployment]:
        if self._total <= 0:
            return self.deployments
        index = bisect_right(self._cumulative, self.rng.random() * self._total)
        return self._orders[min(index, len(self._orders) - 1)]


class RoundRobinStrategy(Strategy):
    """Each request starts one member further along: an exactly even spread."""

    def __init__(self, name: str, members: list[Member], rng: random.Random) -> None:
        super().__init__(name, members, rng)
        d = self.deployments
        self._orders = [d[i:] + d[:i] for i in range(len(d))]
        self._next = 0

    def order(self, route_key: str) -> list[Deployment]:
        ordered = self._orders[self._next]
        self._next = (self._next + 1) % len(self._orders)
        return ordered


def _latency_key(d: Deployment) -> tuple[float, float]:
    # Untried deployments sort first so each gets measured once.
    s = d.stats
    return (s.ewma_ttft_ms, s.ewma_latency_ms) if s.samples else (-1.0, -1.0)


class LeastLatencyStrategy(Strategy):
    """Lowest moving-average time to first token first (what a streaming caller feels);
    total latency breaks ties, since it mostly reflects how long the answer is."""

    def order(self, route_key: str) -> list[Deployment]:
        return sorted(self.deployments, key=_latency_key)


def _blended_price(m: Member) -> float:
    price = m.deployment.config.price
    return float("inf") if price is None else price.input_per_mtok + price.output_per_mtok


class LowestCostStrategy(Strategy):
    """Cheapest by the price table first (input plus output per million tokens); members
    without a price last. Prices only change on reload, so the order is computed once."""

    def __init__(self, name: str, members: list[Member], rng: random.Random) -> None:
        super().__init__(name, members, rng)
        self._order = [m.deployment for m in sorted(members, key=_blended_price)]

    def order(self, route_key: str) -> list[Deployment]:
        return self._order


def _in_flight(d: Deployment) -> int:
    return d.stats.in_flight


class LeastBusyStrategy(RoundRobinStrategy):
    """Fewest requests in flight first; ties rotate so idle members share the load."""

    def order(self, route_key: str) -> list[Deployment]:
        return sorted(super().order(route_key), key=_in_flight)


class AbSplitStrategy(Strategy):
    """Each member gets `percent` of the traffic. A caller's route key always lands on the
    same member (hash of group and key), so one user keeps one variant; requests
    without a key are split at random. The other members follow as fallbacks."""

    def __init__(self, name: str, members: list[Member], rng: random.Random) -> None:
        super().__init__(name, members, rng)
        self._cumulative = list(accumulate(m.percent or 0.0 for m in members))
        d = self.deployments
        self._orders = [[d[i], *d[:i], *d[i + 1 :]] for i in range(len(d))]
        self._salt = name.encode() + b"\0"

    def bucket(self, route_key: str) -> float:
        """A point in [0, 100): stable for a key, uniform over keys."""
        if not route_key:
            return self.rng.random() * 100.0
        digest = hashlib.blake2b(self._salt + route_key.encode(), digest_size=8).digest()
        return int.from_bytes(digest) / 2.0**64 * 100.0

    def order(self, route_key: str) -> list[Deployment]:
        index = bisect_right(self._cumulative, self.bucket(route_key))
        return self._orders[min(index, len(self._orders) - 1)]


STRATEGIES: dict[str, type[Strategy]] = {
    "priority": PriorityStrategy,
    "weighted": WeightedStrategy,
    "round_robin": RoundRobinStrategy,
    "least_latency": LeastLatencyStrategy,
    "lowest_cost": LowestCostStrategy,
    "least_busy": LeastBusyStrategy,
    "ab_split": AbSplitStrategy,
}


def build_strategy(kind: str, name: str, members: list[Member], rng: random.Random) -> Strategy:
    return STRATEGIES[kind](name, members, rng)
