"""Per-key spend limits per UTC day or month, enforced by reserving before the call.

A request for a key with a budget reserves its worst-case cost (prompt tokens +
max output tokens, priced) before any upstream call and settles with the real
cost after. Admission is "not yet at the limit, counting every in-flight
reservation", done atomically in the store. So however many requests race, the
spend can pass a limit by at most the one request admitted just under it
(provided real costs stay within their estimates, which they do whenever the
provider counts tokens like our tokenizer).

Amounts are integer nano-dollars in the stores: exact sums, atomic increments.
Periods are UTC and keyed by their start date: a request is charged to the
period it was admitted in, even if it settles after midnight.
"""

from __future__ import annotations

import asyncio
import calendar
import itertools
import logging
import math
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Protocol

from llmproxy.server.config.caching import BudgetConfig
from llmproxy.server.errors import BudgetExceededError, QuotaViolation, UnavailableError

log = logging.getLogger(__name__)

NANO = 1_000_000_000


def to_nano(usd: float) -> int:
    return math.ceil(usd * NANO)


@dataclass(slots=True, frozen=True)
class Slot:
    """One budget in its current period."""

    key_id: str
    period: str  # "day" | "month"
    start: str  # the period's first day, YYYY-MM-DD (UTC)
    limit: int  # nano-USD
    resets_at: float  # epoch seconds of the next period's start

    @property
    def name(self) -> str:
        return f"{self.key_id}:{self.period}:{self.start}"


@dataclass(slots=True, frozen=True)
class Refusal:
    """Why a reservation was refused: the first full slot and what it held."""

    slot: Slot
    spent: int
    reserved: int


@dataclass(slots=True, frozen=True)
class Reservation:
    id: str
    slots: tuple[Slot, ...]
    amount: int


class BudgetStore(Protocol):
    # Whether an operation can suspend (I/O): a caller cancelled meanwhile must not
    # leave a hold behind, so Budgets shields such a reserve (see `Budgets.reserve`).
    suspends: ClassVar[bool]

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        """Atomically: if every slot has spent + reserved < limit, add `amount` to each
        slot's reservations and return None; otherwise change nothing and say why."""

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        """Drop reservation `rid` and add `spent` to each slot."""

    async def usage(self, slot: Slot) -> tuple[int, int]:
        """(spent, reserved) of one slot, for inspection."""

    async def close(self) -> None: ...


def period_slot(config: BudgetConfig, now: float) -> Slot:
    day = datetime.fromtimestamp(now, UTC).date()
    if config.period == "day":
        start, end = day, day + timedelta(days=1)
    else:
        start = day.replace(day=1)
        end = start + timedelta(days=calendar.monthrange(start.year, start.month)[1])
    resets_at = datetime(end.year, end.month, end.day, tzinfo=UTC).timestamp()
    return Slot(
        config.key_id, config.period, start.isoformat(), to_nano(config.limit_usd), resets_at
    )


class MemoryBudgetStore:
    """Per-process state for a single replica (the embedded default); no awaits inside."""

    suspends = False

    def __init__(self) -> None:
        self._slots: dict[str, list[int]] = {}  # name -> [spent, reserved]
        self._reservations: dict[str, int] = {}

    async def reserve(
        self, slots: Sequence[Slot], rid: str, amount: int, expires_at: float
    ) -> Refusal | None:
        states = [self._slots.setdefault(s.name, [0, 0]) for s in slots]
        for slot, (spent, reserved) in zip(slots, states, strict=True):
            if spent + reserved >= slot.limit:
                return Refusal(slot, spent, reserved)
        for state in states:
            state[1] += amount
        self._reservations[rid] = amount
        return None

    async def settle(self, slots: Sequence[Slot], rid: str, spent: int) -> None:
        amount = self._reservations.pop(rid, 0)
        for slot in slots:
            state = self._slots.setdefault(slot.name, [0, 0])
            state[0] += spent
            state[1] -= amount

    async def usage(self, slot: Slot) -> tuple[int, int]:
        spent, reserved = self._slots.get(slot.name, (0, 0))
        return spent, reserved

    async def close(self) -> None:
        return None


class Budgets:
    """The budgets of every key, over one store; what the accounting stage calls."""

    def __init__(
        self,
        configs: Sequence[BudgetConfig],
        store: BudgetStore,
        *,
        reservation_ttl_s: float = 900,
        fail_open: bool = False,
    ) -> None:
        self.store = store
        self.reservation_ttl_s = reservation_ttl_s
        self.fail_open = fail_open
        self.by_key: dict[str, list[BudgetConfig]] = {}
        for config in configs:
            self.by_key.setdefault(config.key_id, []).append(config)
        # key -> (slots, when the first of them resets): period math once per period.
        self._slots: dict[str, tuple[tuple[Slot, ...], float]] = {}
        # Reservation ids: unique across replicas, cheaper than a uuid per request.
        self._rid_prefix = uuid.uuid4().hex[:16]
        self._rids = itertools.count()
        # Settles and releases running off the requests' paths; `drain` waits for them.
        self._pending: set[asyncio.Task[None]] = set()

    def applies_to(self, key_id: str) -> bool:
        return key_id in self.by_key

    def slots(self, key_id: str, now: float | None = None) -> tuple[Slot, ...]:
        now = time.time() if now is None else now
        cached = self._slots.get(key_id)
        if cached is not None and now < cached[1]:
            return cached[0]
        slots = tuple(period_slot(c, now) for c in self.by_key.get(key_id, ()))
        if slots:
            self._slots[key_id] = (slots, min(s.resets_at for s in slots))
        return slots

    async def reserve(
        self, key_id: str, estimate_usd: float, deadline_s: float | None = None
    ) -> Reservation | None:
        """Hold `estimate_usd` against every budget of `key_id`, or raise BudgetExceededError.

        None when the key has no budget (or the store is down and fail_open is set).
        """
        now = time.time()
        slots = self.slots(key_id, now)
        if not slots:
            return None
        rid = f"{self._rid_prefix}{next(self._rids)}"
        amount = to_nano(estimate_usd)
        # A replica that dies mid-request cannot release; its hold lapses after this.
        hold = self.reservation_ttl_s if deadline_s is None else deadline_s + 60
        reservation = Reservation(rid, slots, amount)
        try:
            if self.store.suspends:
                refusal = await self._shielded_reserve(reservation, now + hold)
            else:
                refusal = await self.store.reserve(slots, rid, amount, now + hold)
        except Exception as error:
            if self.fail_open:
                log.warning("budget store unavailable, admitting unaccounted: %r", error)
                return None
            log.warning("budget store unavailable, refusing budgeted request: %r", error)
            raise UnavailableError("the budget store is unavailable; try again") from None
        if refusal is not None:
            raise exceeded(refusal, now)
        return reservation

    async def _shielded_reserve(self, held: Reservation, expires_at: float) -> Refusal | None:
        """The store's reserve, run to its end even if the caller is cancelled meanwhile:
        the hold may already be in the store, so it is released once the store answers
        (releasing earlier could reach the store before the hold does)."""
        reserving = asyncio.ensure_future(
            self.store.reserve(held.slots, held.id, held.amount, expires_at)
        )
        try:
            return await asyncio.shield(reserving)
        except asyncio.CancelledError:
            self._track(self._release_after(reserving, held))
            raise

    async def _release_after(
        self, reserving: asyncio.Future[Refusal | None], reservation: Reservation
    ) -> None:
        try:
            refused = (await reserving) is not None
        except Exception:
            refused = False  # the hold may have been made before the failure: release it
        if not refused:
            await self.settle(reservation, 0.0)

    def settle_soon(self, reservation: Reservation, cost_usd: float) -> None:
        """`settle` in a task of its own, so a request cancelled meanwhile still settles."""
        self._track(self.settle(reservation, cost_usd))

    def _track(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Replace the hold with the real cost (0 releases it); never raises."""
        try:
            await self.store.settle(reservation.slots, reservation.id, to_nano(cost_usd))
        except Exception:
            log.exception("budget settle failed; the hold lapses after its ttl")

    async def drain(self) -> None:
        """Wait for every settle and release under way (App.stop, after the server drained)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


def exceeded(refusal: Refusal, now: float) -> BudgetExceededError:
    slot = refusal.slot
    resets = datetime.fromtimestamp(slot.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    noun = "daily" if slot.period == "day" else "monthly"
    description = (
        f"{noun} budget of ${slot.limit / NANO:.2f} for key {slot.key_id!r} is used up: "
        f"${refusal.spent / NANO:.6f} spent and ${refusal.reserved / NANO:.6f} held by "
        f"requests in flight; it resets at {resets}"
    )
    return BudgetExceededError(
        description,
        retry_after=max(slot.resets_at - now, 0.0),
        violations=[QuotaViolation(f"budget:{slot.key_id}:{slot.period}", description)],
        metadata={"key_id": slot.key_id, "period": slot.period, "resets_at": resets},
    )
