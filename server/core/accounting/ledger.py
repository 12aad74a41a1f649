"""The usage ledger's writer: requests enqueue records, a background task writes them in batches.

`enqueue` is the only thing a request does: an append to an in-memory buffer,
no I/O, no lock, no await. A flusher task writes the buffer every
`flush_interval` (or as soon as `max_batch` records wait) through a backend
(SQLite in a worker thread, or PostgreSQL over asyncpg).

Durability, stated plainly: a graceful stop (`stop()`, called by App.stop after
the gRPC server has drained) flushes every record. A crash (SIGKILL, OOM, power
loss) loses the records still in the buffer: at most the last flush interval's
worth. While the database is unreachable, records are kept and retried on the
next flush, up to `max_pending`; beyond that the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llmproxy.server.core.accounting.records import UsageAggregate, UsageFilter, UsageRecord

log = logging.getLogger(__name__)


class LedgerBackend(Protocol):
    async def open(self) -> None:
        """Connect and create the table if needed; may be called again after a failure."""

    async def write(self, records: list[UsageRecord]) -> None:
        """Store every record in one transaction, or raise and store none."""

    async def aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        """Sums by (UTC day, key, model), ordered by those."""

    async def close(self) -> None: ...


class LedgerWriter:
    def __init__(
        self,
        backend: LedgerBackend,
        *,
        flush_interval_s: float,
        max_batch: int = 1000,
        max_pending: int = 100_000,
    ) -> None:
        self.backend = backend
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._pending: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._opened = False
        self.written = 0
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def enqueue(self, record: UsageRecord) -> None:
        """Hot path: O(1), never blocks, never raises."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            pending.popleft()
            self.dropped += 1
        pending.append(record)
        if len(pending) >= self.max_batch:
            self._wake.set()

    async def start(self) -> None:
        try:
            await self._open()
        except Exception:
            # Serving must not depend on the ledger; flushes retry the connection.
            log.exception("usage ledger unavailable at start; records are kept and retried")
        self._task = asyncio.create_task(self._run(), name="ledger-flusher")

    async def stop(self) -> None:
        """Write everything enqueued so far, then close. Called once no request can enqueue."""
        if self._task is not None:
            # Under the lock, so a flush in progress ends first: cancelled half-way, its
            # batch (already out of the buffer, its write not yet run) would be lost.
            async with self._lock:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self._pending:
            log.error("usage ledger closed with %d unwritten records", len(self._pending))
        await self.backend.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now; on failure keep it for the next flush."""
        async with self._lock:
            if not self._pending:
                return
            batch = list(self._pending)
            self._pending.clear()
            try:
                await self._open()
                await self.backend.write(batch)
            except Exception:
                self.failures += 1
                log.exception("usage ledger write of %d records failed; will retry", len(batch))
                self._requeue(batch)
                return
            self.written += len(batch)

    async def aggregate(self, where: UsageFilter) -> list[UsageAggregate]:
        """Reads this replica's own writes: pending records are flushed first."""
        # Shielded: a reader leaving mid-write (deadline, cancel) would otherwise drop the
        # batch, which is already out of the buffer; stop() waits for it under the lock.
        await asyncio.shield(self.flush())
        await self._open()
        return await self.backend.aggregate(where)

    async def _open(self) -> None:
        if not self._opened:
            await self.backend.open()
            self._opened = True

    def _requeue(self, batch: list[UsageRecord]) -> None:
        # Records enqueued during the failed write go after the batch; drop the oldest.
        merged = deque(batch)
        merged.extend(self._pending)
        overflow = len(merged) - self.max_pending
        for _ in range(max(overflow, 0)):
            merged.popleft()
        self.dropped += max(overflow, 0)
        self._pending = merged


class LedgerCollector(Collector):
    """Exposes the writer's counters at scrape time: nothing is counted on the request path."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self.writer
        yield CounterMetricFamily(
            "llmproxy_ledger_records_written", "Usage records written to the ledger", w.written
        )
        yield CounterMetricFamily(
            "llmproxy_ledger_records_dropped",
            "Usage records dropped because the ledger stayed unreachable",
            w.dropped,
        )
        yield CounterMetricFamily(
            "llmproxy_ledger_write_failures", "Failed ledger batch writes", w.failures
        )
        yield GaugeMetricFamily(
            "llmproxy_ledger_pending_records", "Usage records waiting to be written", w.pending
        )
