"""Builds the accounting parts from Settings and owns their lifetimes; answers GetUsage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from llmproxy.server.config import Settings
from llmproxy.server.config.caching import BudgetStoreConfig, LedgerConfig
from llmproxy.server.core import tokens
from llmproxy.server.core.accounting.budgets import Budgets, BudgetStore, MemoryBudgetStore
from llmproxy.server.core.accounting.ledger import LedgerBackend, LedgerCollector, LedgerWriter
from llmproxy.server.core.accounting.records import UsageAggregate, UsageFilter
from llmproxy.server.core.accounting.stage import UsageAccounting
from llmproxy.server.core.catalog import Catalog
from llmproxy.server.errors import UnavailableError, UnimplementedError

log = logging.getLogger(__name__)


def _sqlite(config: LedgerConfig) -> LedgerBackend:
    from llmproxy.server.core.accounting.sqlite_ledger import SqliteLedger

    return SqliteLedger(config.path, config.table)


def _postgres_ledger(config: LedgerConfig) -> LedgerBackend:
    from llmproxy.server.core.accounting.postgres_ledger import PostgresLedger

    return PostgresLedger(config.dsn.get_secret_value(), config.table)


def _memory(config: BudgetStoreConfig) -> BudgetStore:
    return MemoryBudgetStore()


def _redis(config: BudgetStoreConfig) -> BudgetStore:
    from llmproxy.server.core.accounting.redis_budgets import RedisBudgetStore

    return RedisBudgetStore(config.redis_url.get_secret_value(), config.prefix)


def _postgres_budgets(config: BudgetStoreConfig) -> BudgetStore:
    from llmproxy.server.core.accounting.postgres_budgets import PostgresBudgetStore

    return PostgresBudgetStore(config.dsn.get_secret_value(), config.prefix)


LEDGERS: dict[str, Callable[[LedgerConfig], LedgerBackend]] = {
    "sqlite": _sqlite,
    "postgres": _postgres_ledger,
}
BUDGET_STORES: dict[str, Callable[[BudgetStoreConfig], BudgetStore]] = {
    "memory": _memory,
    "redis": _redis,
    "postgres": _postgres_budgets,
}


class Accounting:
    """The stage the query path calls, plus the ledger writer and budget store behind it."""

    def __init__(
        self,
        stage: UsageAccounting,
        ledger: LedgerWriter | None = None,
        budgets: Budgets | None = None,
        models: tuple[str, ...] = (),
    ) -> None:
        self.stage = stage
        self.ledger = ledger
        self.budgets = budgets
        self.models = models  # upstream model names, whose tokenizers start() loads

    async def start(self) -> None:
        await asyncio.to_thread(tokens.warm, self.models)
        if self.ledger is not None:
            await self.ledger.start()

    async def stop(self) -> None:
        """After the gRPC server has drained: settle what is pending, flush, close."""
        await self.stage.drain()
        if self.ledger is not None:
            await self.ledger.stop()
        if self.budgets is not None:
            await self.budgets.store.close()

    async def usage(self, where: UsageFilter) -> list[UsageAggregate]:
        if self.ledger is None:
            raise UnimplementedError("the usage ledger is disabled (ledger.backend: none)")
        try:
            return await self.ledger.aggregate(where)
        except Exception:
            log.exception("usage ledger query failed")
            raise UnavailableError("the usage ledger is unavailable; try again") from None


def build_accounting(
    settings: Settings, catalog: Catalog, registry: CollectorRegistry | None = None
) -> Accounting:
    if unpriced := sorted(d.name for d in catalog.deployments.values() if d.config.price is None):
        log.warning("models without a price cost nothing in the ledger and budgets: %s", unpriced)
    ledger = None
    config = settings.ledger
    if config.backend != "none":
        ledger = LedgerWriter(
            LEDGERS[config.backend](config),
            flush_interval_s=config.flush_interval_ms / 1000,
            max_batch=config.max_batch,
            max_pending=config.max_pending,
        )
        if registry is not None:
            registry.register(LedgerCollector(ledger))
    budgets = None
    if settings.budgets:
        store = settings.budget_store
        budgets = Budgets(
            settings.budgets,
            BUDGET_STORES[store.backend](store),
            reservation_ttl_s=store.reservation_ttl_s,
            fail_open=store.on_failure == "open",
        )
    stage = UsageAccounting(budgets=budgets, ledger=ledger)
    models = tuple(d.config.upstream for d in catalog.deployments.values())
    return Accounting(stage, ledger, budgets, models)
