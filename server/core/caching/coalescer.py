"""Request coalescing: identical requests in flight at once share one upstream call.

The shared call runs in a task of its own, not in any caller's, so a caller that
leaves (cancelled, deadline) takes nothing from the others; when the last caller
leaves, the task is cancelled and the upstream connection closes. Every event is
kept until the call ends, so a late joiner first gets what was already streamed.

The call runs with the context, hence the deadline, of the caller that started it
(its owner). A failure before anything was streamed that may be down to that
deadline (the executor refusing to start an attempt in time the owner no longer
has, or anything after the owner left) is the owner's alone: the callers still
waiting run the call again, in their own time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from llmproxy.server.domain import Completed, QueryEvent, TextDelta
from llmproxy.server.errors import DeadlineExceededError, UnavailableError

OnCompleted = Callable[[list[QueryEvent], Completed], None]
# (the shared Completed, when this caller got its first text, whether it is charged)
Shared = Callable[[Completed, float | None, bool], Completed]
Produce = Callable[[], AsyncIterator[QueryEvent]]


class Flight:
    __slots__ = (
        "billed_to",
        "changed",
        "done",
        "error",
        "events",
        "key",
        "owner",
        "owners_only",
        "subscribers",
        "task",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[QueryEvent] = []
        self.done = False
        self.error: BaseException | None = None
        # Whether `error` may be the owner's deadline's doing: the others run it again.
        self.owners_only = False
        # Subscriber tokens in join order; the first one is charged for the call.
        self.subscribers: list[object] = []
        self.owner: object | None = None
        self.billed_to: object | None = None
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def _publish(self, event: QueryEvent) -> None:
        self.events.append(event)
        # set() resolves every current waiter; clearing at once re-arms it for the next event.
        self.changed.set()
        self.changed.clear()


class Coalescer:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def flights(self) -> list[Flight]:
        """The calls in flight now (for status and tests)."""
        return list(self._flights.values())

    def join(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def _start(self, key: str, produce: Produce, on_completed: OnCompleted) -> Flight:
        flight = self._flights[key] = Flight(key)
        flight.task = asyncio.create_task(self._run(flight, produce, on_completed))
        return flight

    async def _run(self, flight: Flight, produce: Produce, on_completed: OnCompleted) -> None:
        try:
            async for event in produce():
                if type(event) is Completed:
                    flight.billed_to = flight.subscribers[0] if flight.subscribers else None
                    on_completed(flight.events, event)
                flight._publish(event)
        except asyncio.CancelledError:
            flight.error = UnavailableError("the shared upstream call was cancelled")
            raise
        except BaseException as exc:
            flight.error = exc
            flight.owners_only = not flight.events and (
                type(exc) is DeadlineExceededError or flight.owner not in flight.subscribers
            )
        finally:
            flight.done = True
            self._forget(flight)
            flight.changed.set()

    def _forget(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def follow(
        self, key: str, produce: Produce, on_completed: OnCompleted, shared: Shared
    ) -> AsyncIterator[QueryEvent]:
        """Every event of the call in flight under `key` from the first, starting it
        with `produce` (and `on_completed` once it completes) when there is none.

        `shared(completed, first_text_at, billed)` turns the Completed event of every
        caller but the owner into that caller's own.
        """
        while True:
            flight = self._flights.get(key)
            owner = flight is None
            if flight is None:
                flight = self._start(key, produce, on_completed)
            token = object()
            flight.subscribers.append(token)
            if owner:
                flight.owner = token
            i = 0
            first_at: float | None = None
            try:
                while True:
                    events = flight.events
                    while i < len(events):
                        event = events[i]
                        i += 1
                        if type(event) is TextDelta:
                            if first_at is None:
                                first_at = time.perf_counter()
                        elif type(event) is Completed and not owner:
                            event = shared(event, first_at, flight.billed_to is token)
                        yield event
                    if flight.done:
                        break
                    await flight.changed.wait()
            finally:
                flight.subscribers.remove(token)
                if not flight.subscribers and not flight.done and flight.task is not None:
                    # The last caller left: nobody wants the answer any more.
                    self._forget(flight)
                    flight.task.cancel()
            if flight.error is None:
                return
            if owner or not flight.owners_only:
                raise flight.error
            # Nothing was streamed (so nothing reached this caller): run it again.
