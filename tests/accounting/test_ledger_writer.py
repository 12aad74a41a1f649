"""The ledger writer: batches off the request path, retries a down database, bounded memory."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from llmproxy.server.core.accounting.ledger import LedgerCollector, LedgerWriter
from llmproxy.server.core.accounting.records import UsageRecord
from tests.accounting.streams import ListLedger


def record(i: int) -> UsageRecord:
    return UsageRecord(time.time(), f"r{i}", "k", "m", "p", "OK", "miss", 1, 1, 0, 0.0, 1.0)


async def test_records_are_written_every_flush_interval():
    backend = ListLedger()
    writer = LedgerWriter(backend, flush_interval_s=0.05)
    await writer.start()
    try:
        writer.enqueue(record(1))
        assert backend.records == []  # enqueue never writes
        await asyncio.sleep(0.15)
        assert [r.request_id for r in backend.records] == ["r1"]
    finally:
        await writer.stop()


async def test_a_full_batch_is_written_before_the_interval():
    backend = ListLedger()
    writer = LedgerWriter(backend, flush_interval_s=60, max_batch=10)
    await writer.start()
    try:
        for i in range(10):
            writer.enqueue(record(i))
        await asyncio.sleep(0.05)
        assert len(backend.records) == 10
    finally:
        await writer.stop()


async def test_stop_writes_everything_enqueued():
    backend = ListLedger()
    writer = LedgerWriter(backend, flush_interval_s=60)
    await writer.start()
    for i in range(500):
        writer.enqueue(record(i))
    await writer.stop()
    assert [r.request_id for r in backend.records] == [f"r{i}" for i in range(500)]


async def test_stop_during_a_flush_lets_that_write_finish():
    class SlowLedger(ListLedger):
        async def write(self, records: list[UsageRecord]) -> None:
            await asyncio.sleep(0.05)
            await super().write(records)

    backend = SlowLedger()
    writer = LedgerWriter(backend, flush_interval_s=0.01)
    await writer.start()
    writer.enqueue(record(1))
    await asyncio.sleep(0.03)  # the flusher has taken the batch and is writing it
    assert writer.pending == 0 and backend.records == []
    await writer.stop()
    assert [r.request_id for r in backend.records] == ["r1"]


async def test_a_failed_write_keeps_the_records_for_the_next_flush_in_order():
    backend = ListLedger()
    writer = LedgerWriter(backend, flush_interval_s=60)
    backend.fail = True
    writer.enqueue(record(1))
    await writer.flush()
    writer.enqueue(record(2))
    assert (writer.pending, writer.failures) == (2, 1)
    backend.fail = False
    await writer.flush()
    assert [r.request_id for r in backend.records] == ["r1", "r2"]
    assert writer.written == 2


async def test_while_the_database_is_down_memory_stays_bounded_dropping_the_oldest():
    backend = ListLedger()
    backend.fail = True
    writer = LedgerWriter(backend, flush_interval_s=60, max_pending=5)
    for i in range(4):
        writer.enqueue(record(i))
    await writer.flush()
    for i in range(4, 8):
        writer.enqueue(record(i))
    await writer.flush()
    assert (writer.pending, writer.dropped) == (5, 3)
    backend.fail = False
    await writer.flush()
    assert [r.request_id for r in backend.records] == ["r3", "r4", "r5", "r6", "r7"]


async def test_counters_are_exposed_to_prometheus():
    backend = ListLedger()
    writer = LedgerWriter(backend, flush_interval_s=60)
    registry = CollectorRegistry()
    registry.register(LedgerCollector(writer))
    writer.enqueue(record(1))
    assert registry.get_sample_value("llmproxy_ledger_pending_records") == 1
    await writer.flush()
    assert registry.get_sample_value("llmproxy_ledger_records_written_total") == 1
    assert registry.get_sample_value("llmproxy_ledger_records_dropped_total") == 0


async def test_a_usage_read_cancelled_mid_flush_loses_no_records():
    """GetUsage flushes first; its caller leaving (deadline, cancel) must not drop the batch."""

    class SlowLedger(ListLedger):
        async def write(self, records: list[UsageRecord]) -> None:
            await asyncio.sleep(0.05)
            await super().write(records)

    backend = SlowLedger()
    writer = LedgerWriter(backend, flush_interval_s=60)
    await writer.start()
    writer.enqueue(record(1))
    reader = asyncio.create_task(writer.aggregate(None))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # the read's flush is writing the batch
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await writer.stop()
    assert [r.request_id for r in backend.records] == ["r1"]
