"""Builds the routing table from Settings and reloads it from the config file, atomically.

The routing table is the Catalog: models, groups, routing and resilience. A
reload (SIGHUP, or the file changing) validates the whole file off the event
loop, builds a new Catalog and swaps one reference; requests already running
keep the Catalog they started with. An invalid file is rejected with one log
line and the running table stays. Providers whose config did not change are
reused with their HTTP clients and key pools; the clients of retired ones are
closed once no request that could still use them is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from llmproxy.server.config import ConfigError, Settings, load_settings
from llmproxy.server.config.providers import ProviderConfig
from llmproxy.server.config.server import HttpClientConfig
from llmproxy.server.core.catalog import Catalog, build_deployments
from llmproxy.server.core.routing.observer import NULL_OBSERVER, RoutingObserver
from llmproxy.server.providers.base import Provider

log = logging.getLogger(__name__)

ProviderFactory = Callable[[ProviderConfig, Settings], tuple[Provider, httpx.AsyncClient | None]]
# Sections a reload applies; a change anywhere else is logged as needing a restart.
ROUTING_SECTIONS = frozenset({"providers", "models", "groups", "routing", "resilience"})
# A request holds its Catalog from planning to the end of its stream; the planning
# step itself is not counted, so retired clients also wait this long after the swap.
_RETIRE_AFTER_S = 1.0
_SWEEP_EVERY_S = 0.25


@dataclass(slots=True)
class _Built:
    config: ProviderConfig
    http: HttpClientConfig
    provider: Provider
    client: httpx.AsyncClient | None


@dataclass(slots=True)
class _Retired:
    at: float
    clients: list[httpx.AsyncClient]
    # Catalogs whose running requests may still use the clients.
    catalogs: list[Catalog]


class RoutingTables:
    """Owns the providers behind the routing table, and their HTTP clients, across reloads."""

    def __init__(
        self,
        make_provider: ProviderFactory,
        *,
        observer: RoutingObserver = NULL_OBSERVER,
        rng: random.Random | None = None,
    ) -> None:
        self._make_provider = make_provider
        self._observer = observer
        self._rng = rng
        self._built: dict[str, _Built] = {}
        # Every client not yet closed (current and retired); App.stop closes them all.
        self.clients: list[httpx.AsyncClient] = []
        self._retired: list[_Retired] = []
        self._old: list[Catalog] = []
        self._sweeper: asyncio.Task[None] | None = None

    def build(self, settings: Settings, previous: Catalog | None = None) -> Catalog:
        """A new Catalog; raises ValueError (nothing changed) when it cannot be built."""
        built: dict[str, _Built] = {}
        fresh: list[httpx.AsyncClient] = []
        try:
            for config in settings.providers:
                http = config.http or settings.http_client
                old = self._built.get(config.name)
                if old is not None and old.config == config and old.http == http:
                    built[config.name] = old
                    continue
                provider, client = self._make_provider(config, settings)
                if client is not None:
                    fresh.append(client)
                built[config.name] = _Built(config, http, provider, client)
            providers = {name: b.provider for name, b in built.items()}
            deployments = build_deployments(
                settings.models,
                providers,
                settings.resilience,
                previous=previous,
                observer=self._observer,
            )
            catalog = Catalog(
                deployments, settings.groups, settings.routing, settings.resilience, rng=self._rng
            )
        except Exception:
            for client in fresh:
                _close_later(client)
            raise
        if previous is not None:
            # Older tables may still run long streams through a provider retired now.
            self._old = [previous, *(c for c in self._old if c.active)]
        retired = [
            b.client
            for name, b in self._built.items()
            if b.client is not None and built.get(name) is not b
        ]
        if retired:
            self._retired.append(_Retired(time.monotonic(), retired, list(self._old)))
        self._built = built
        self.clients.extend(fresh)
        return catalog

    def start_sweeping(self) -> None:
        if self._retired and (self._sweeper is None or self._sweeper.done()):
            self._sweeper = asyncio.create_task(self._sweep())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    async def _sweep(self) -> None:
        while self._retired:
            await asyncio.sleep(_SWEEP_EVERY_S)
            now = time.monotonic()
            for entry in list(self._retired):
                if now - entry.at < _RETIRE_AFTER_S or any(c.active for c in entry.catalogs):
                    continue
                self._retired.remove(entry)
                for client in entry.clients:
                    if client in self.clients:
                        self.clients.remove(client)
                    await client.aclose()


def _close_later(client: httpx.AsyncClient) -> None:
    with contextlib.suppress(RuntimeError):  # no running loop: nothing was ever opened
        asyncio.get_running_loop().create_task(client.aclose())


class ConfigReloader:
    """Reloads on request (SIGHUP) and when the file changes; one reload at a time."""

    def __init__(
        self,
        tables: RoutingTables,
        path: str | Path,
        *,
        settings: Settings,
        current: Callable[[], Catalog],
        swap: Callable[[Catalog], None],
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.tables = tables
        self.path = Path(path)
        self.settings = settings
        self._current = current
        self._swap = swap
        self._overrides = dict(overrides or {})
        self._lock = asyncio.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        interval = self.settings.routing.watch_interval_s
        if interval > 0:
            self._watcher = asyncio.create_task(self._watch(interval))

    async def stop(self) -> None:
        tasks = [t for t in (self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.tables.stop()

    def request(self) -> None:
        """Signal-handler entry point: reload soon, on the loop."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Load, validate and swap in the file's routing table; False if it was rejected."""
        async with self._lock:
            self._seen = await self._stat()
            try:
                settings = await asyncio.to_thread(
                    load_settings, self.path, overrides=self._overrides
                )
                catalog = self.tables.build(settings, self._current())
            except (ConfigError, ValueError) as error:
                log.error(
                    "config reload rejected; the running routing table stays: %s",
                    error,
                    extra={"path": str(self.path)},
                )
                return False
            except Exception:
                # A bug must not kill the watcher or leave a half-built table behind.
                log.exception(
                    "config reload failed; the running routing table stays",
                    extra={"path": str(self.path)},
                )
                return False
            self._swap(catalog)
            self.tables.start_sweeping()
            ignored = sorted(
                name
                for name in Settings.model_fields
                if name not in ROUTING_SECTIONS
                and getattr(settings, name) != getattr(self.settings, name)
            )
            if ignored:
                log.warning(
                    "config reload: changes to %s apply only after a restart", ", ".join(ignored)
                )
            self.settings = settings
            log.info(
                "routing table reloaded",
                extra={
                    "path": str(self.path),
                    "models": list(catalog.deployments),
                    "groups": list(catalog.groups),
                },
            )
            return True

    async def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = await asyncio.to_thread(os.stat, self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _watch(self, interval_s: float) -> None:
        self._seen = await self._stat()
        while True:
            await asyncio.sleep(interval_s)
            seen = await self._stat()
            if seen is not None and seen != self._seen:
                await self.reload()
