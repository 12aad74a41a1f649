"""Request coalescing: identical requests in flight at once share one upstream call.

The shared call runs in a task of its own, not in any caller's, so a caller that
leaves (cancelled, deadline) takes nothing from the others; when the last caller
leaves, the task is cancelled and the upstream connection closes. Every event is
kept until the call ends, so a late joiner first gets what was already streamed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from llmproxy.server.domain import Completed, QueryEvent, TextDelta
from llmproxy.server.errors import UnavailableError

OnCompleted = Callable[[list[QueryEvent], Completed], None]


class Flight:
    __slots__ = ("billed_to", "changed", "done", "error", "events", "key", "subscribers", "task")

    def __init__(self, key: str) -> None:
        self.key = key
        self.events: list[QueryEvent] = []
        self.done = False
        self.error: BaseException | None = None
        # Subscriber tokens in join order; the first one is charged for the call.
        self.subscribers: list[object] = []
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

    def start(
        self, key: str, produce: Callable[[], AsyncIterator[QueryEvent]], on_completed: OnCompleted
    ) -> Flight:
        flight = self._flights[key] = Flight(key)
        flight.task = asyncio.create_task(self._run(flight, produce, on_completed))
        return flight

    async def _run(
        self,
        flight: Flight,
        produce: Callable[[], AsyncIterator[QueryEvent]],
        on_completed: OnCompleted,
    ) -> None:
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
        finally:
            flight.done = True
            self._forget(flight)
            flight.changed.set()

    def _forget(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def subscribe(
        self, flight: Flight, shared: Callable[[Completed, float | None], Completed]
    ) -> AsyncIterator[QueryEvent]:
        """Every event of the flight from the first.

        `shared(completed, first_text_at)` turns the Completed event of every caller but
        the billed one into that caller's own.
        """
        token = object()
        flight.subscribers.append(token)
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
                    elif type(event) is Completed and flight.billed_to is not token:
                        event = shared(event, first_at)
                    yield event
                if flight.done:
                    if flight.error is not None:
                        raise flight.error
                    return
                await flight.changed.wait()
        finally:
            flight.subscribers.remove(token)
            if not flight.subscribers and not flight.done and flight.task is not None:
                # The last caller left: nobody wants the answer any more.
                self._forget(flight)
                flight.task.cancel()
