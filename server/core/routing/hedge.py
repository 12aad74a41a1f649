"""Hedged requests: when the first token is late, race a second attempt against the first.

Each attempt runs in its own task and feeds one queue; the first to deliver an
event (the Started that precedes its first token) wins, and the other is
cancelled at once, which closes its upstream connection. Only hedged groups
pay for the tasks and the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from llmproxy.server.domain import QueryEvent

_END = object()
# Enough to absorb a burst while the consumer writes; beyond it the winner waits (backpressure).
_QUEUE_SIZE = 16


async def _pump(tag: int, events: AsyncIterator[QueryEvent], queue: asyncio.Queue) -> None:
    try:
        # aclosing: cancelled while waiting on the queue, the attempt still ends at once.
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                await queue.put((tag, event))
    except Exception as error:  # the attempt's failure is reported through the queue
        await queue.put((tag, error))
    else:
        await queue.put((tag, _END))


class HedgeRace:
    """One primary attempt, and a backup started by `start_backup` after `after_s`."""

    def __init__(
        self,
        primary: AsyncIterator[QueryEvent],
        start_backup: Callable[[], AsyncIterator[QueryEvent] | None],
        after_s: float,
    ) -> None:
        self._primary = primary
        self._start_backup = start_backup
        self.after_s = after_s
        self.backup_started = False
        self.winner: int | None = None  # 0 primary, 1 backup
        self.cancelled: list[int] = []  # attempts cancelled because the other won

    async def events(self) -> AsyncIterator[QueryEvent]:
        """The winner's events; raises the last failure when every attempt failed."""
        queue: asyncio.Queue = asyncio.Queue(_QUEUE_SIZE)
        tasks = {0: asyncio.create_task(_pump(0, self._primary, queue))}
        try:
            first = await self._first_event(queue, tasks)
            for tag, task in tasks.items():
                if tag != self.winner and not task.done():
                    task.cancel()
                    self.cancelled.append(tag)
            await asyncio.gather(
                *(t for tag, t in tasks.items() if tag != self.winner), return_exceptions=True
            )
            yield first
            while True:
                tag, item = await queue.get()
                if tag != self.winner:
                    continue  # queued by the loser before it was cancelled
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _first_event(
        self, queue: asyncio.Queue, tasks: dict[int, asyncio.Task[None]]
    ) -> QueryEvent:
        loop = asyncio.get_running_loop()
        hedge_at = loop.time() + self.after_s
        alive = {0}
        failures: dict[int, object] = {}
        while True:
            if not self.backup_started:
                try:
                    async with asyncio.timeout_at(hedge_at):
                        tag, item = await queue.get()
                except TimeoutError:
                    self.backup_started = True
                    backup = self._start_backup()
                    if backup is not None:
                        tasks[1] = asyncio.create_task(_pump(1, backup, queue))
                        alive.add(1)
                    continue
            else:
                tag, item = await queue.get()
            if item is _END or isinstance(item, BaseException):
                alive.discard(tag)
                failures[tag] = item
                # Before the hedge, or with nothing left racing: the failure is the outcome
                # (the primary's, when both failed: it is the one the caller asked for first).
                if not alive or not self.backup_started:
                    first = failures[min(failures)]
                    if first is _END:
                        raise RuntimeError("attempt ended without an event")
                    raise first
                continue
            self.winner = tag
            return item
