"""The composition root: builds every component from Settings and owns their lifetimes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from llmproxy.server.api.http import build_http_app
from llmproxy.server.api.rest import RestShim
from llmproxy.server.api.servicer import LLMProxyServicer
from llmproxy.server.config import Settings
from llmproxy.server.config.providers import ProviderConfig
from llmproxy.server.core.accounting.service import Accounting, build_accounting
from llmproxy.server.core.caching.stage import ResponseCache
from llmproxy.server.core.caching.wiring import build_cache
from llmproxy.server.core.catalog import Catalog
from llmproxy.server.core.executor import Executor
from llmproxy.server.core.parallel import ParallelQueryService
from llmproxy.server.core.query import QueryService
from llmproxy.server.core.router import Router
from llmproxy.server.core.status import StatusService
from llmproxy.server.interceptors import build_interceptors
from llmproxy.server.observability.metrics import Metrics
from llmproxy.server.observability.multiprocess import build_registries
from llmproxy.server.providers.base import Provider, ProviderSettings
from llmproxy.server.providers.http import HttpClientSettings, build_http_client
from llmproxy.server.providers.keys import KeyPool
from llmproxy.server.providers.registry import provider_class
from llmproxy.server.reload import ConfigReloader, RoutingTables
from llmproxy.v1 import llmproxy_pb2, llmproxy_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = llmproxy_pb2.DESCRIPTOR.services_by_name["LLMProxy"].full_name


def build_provider(
    config: ProviderConfig, settings: Settings
) -> tuple[Provider, httpx.AsyncClient | None]:
    cls = provider_class(config.type)
    client = None
    if cls.uses_http:
        http = config.http or settings.http_client
        client = build_http_client(HttpClientSettings(**http.model_dump()))
    provider_settings = ProviderSettings(
        name=config.name,
        type=config.type,
        base_url=config.base_url,
        headers=dict(config.headers),
        options=dict(config.options),
    )
    return cls(provider_settings, client, KeyPool(list(config.api_keys))), client


@dataclass
class App:
    """Everything one running gateway owns; no module-level state lives elsewhere."""

    settings: Settings
    catalog: Catalog
    queries: QueryService
    parallel: ParallelQueryService
    status: StatusService
    registry: CollectorRegistry
    http_clients: list[httpx.AsyncClient]
    metrics: Metrics
    # The response cache, when enabled: App.stop closes its Redis client.
    cache: ResponseCache | None = None
    # Cost, budgets and the usage ledger: App.start/stop run its ledger writer.
    accounting: Accounting | None = None
    # Reloads the routing table on SIGHUP and file change; None without a config file.
    reloader: ConfigReloader | None = None
    server: grpc.aio.Server | None = None
    health: health.aio.HealthServicer | None = None
    grpc_port: int = 0
    http_port: int = 0
    _http_runner: web.AppRunner | None = None
    _rest_channel: grpc.aio.Channel | None = None
    _serving: bool = field(default=False)
    # Awaited by stop() after the server drains (e.g. the rate limiter's Redis client).
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def swap_catalog(self, catalog: Catalog) -> None:
        """Point every reader at a reloaded routing table, all in one step (no await)."""
        self.catalog = catalog
        self.queries.router.catalog = catalog
        self.status.catalog = catalog
        self.metrics.models = frozenset(catalog.known_names())
        self.metrics.providers = frozenset(d.provider_name for d in catalog.deployments.values())

    async def start(self) -> None:
        cfg = self.settings.server
        shared = cfg.worker_count > 1
        if self.accounting is not None:
            await self.accounting.start()
        self.server = grpc.aio.server(
            interceptors=build_interceptors(self),
            maximum_concurrent_rpcs=cfg.max_concurrent_rpcs,
            options=[
                # On only when worker processes share the port: a lone gateway keeps it to
                # itself, so a second one started by mistake fails to bind.
                ("grpc.so_reuseport", 1 if shared else 0),
                ("grpc.max_receive_message_length", 16 << 20),
            ],
        )
        servicer = LLMProxyServicer(self.queries, self.parallel, self.status, usage=self.accounting)
        llmproxy_pb2_grpc.add_LLMProxyServicer_to_server(servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if cfg.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        address = f"{cfg.host}:{cfg.grpc_port}"
        self.grpc_port = self._bind(address)
        await self.server.start()
        if self.reloader is not None:
            self.reloader.start()
        if cfg.http_port >= 0:
            runner = web.AppRunner(
                build_http_app(self.registry, lambda: self._serving, self._rest_shim()),
                access_log=None,
            )
            await runner.setup()
            site = web.TCPSite(runner, cfg.host, cfg.http_port, reuse_port=shared or None)
            await site.start()
            self._http_runner = runner
            self.http_port = runner.addresses[0][1]
        self.status.start_monitor(cfg.health_check_interval_s)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        log.info(
            "llmproxy serving", extra={"grpc_port": self.grpc_port, "http_port": self.http_port}
        )

    def _rest_shim(self) -> RestShim | None:
        """The REST shim calls this gateway's own gRPC port, so every interceptor applies."""
        if not self.settings.server.rest_shim:
            return None
        if self.settings.tls is not None and self.settings.tls.cert_file:
            log.warning("REST shim disabled: it needs a plaintext gRPC port on loopback")
            return None
        self._rest_channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        return RestShim(self._rest_channel)

    def _bind(self, address: str) -> int:
        assert self.server is not None
        tls = self.settings.tls
        if tls is not None and tls.cert_file:
            from llmproxy.server.interceptors.tls import server_credentials

            return self.server.add_secure_port(address, server_credentials(tls))
        return self.server.add_insecure_port(address)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: health goes NOT_SERVING, new RPCs are refused, in-flight ones get `grace`."""
        grace = self.settings.server.grace_period_s if grace is None else grace
        self._serving = False
        await self.status.stop_monitor()
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if self.settings.server.drain_delay_s:
            await asyncio.sleep(self.settings.server.drain_delay_s)
        if self.server is not None:
            await self.server.stop(grace)
            # Drop it while the loop runs: grpc's __del__ schedules work on the loop.
            self.server = None
        if self.accounting is not None:
            # After the drain: every finished request's record is in the DB before we return.
            await self.accounting.stop()
        for close in self.on_stop:
            await close()
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self._rest_channel is not None:
            await self._rest_channel.close()
        if self.reloader is not None:
            await self.reloader.stop()
        await asyncio.gather(*(c.aclose() for c in self.http_clients), return_exceptions=True)
        if self.cache is not None:
            await self.cache.close()
        log.info("llmproxy stopped")


def build_app(
    settings: Settings,
    *,
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> App:
    """`config_path` (the file `settings` came from) enables reloading the routing table."""
    registry, instruments = build_registries(settings.server)
    names = [*(m.name for m in settings.models), *(g.name for g in settings.groups), "auto"]
    metrics = Metrics(instruments, models=names, providers=[p.name for p in settings.providers])
    tables = RoutingTables(build_provider, observer=metrics)
    catalog = tables.build(settings)
    clients = tables.clients
    cache = build_cache(settings.cache)
    accounting = build_accounting(settings, catalog, registry)
    queries = QueryService(
        Router(catalog), Executor(metrics), cache=cache, accounting=accounting.stage
    )
    app = App(
        settings=settings,
        catalog=catalog,
        queries=queries,
        parallel=ParallelQueryService(queries),
        status=StatusService(
            catalog,
            ttl_s=settings.server.health_check_ttl_s,
            timeout_s=settings.server.health_check_timeout_s,
            on_result=metrics.availability,
        ),
        registry=registry,
        http_clients=clients,
        accounting=accounting,
        cache=cache,
        metrics=metrics,
    )
    if config_path is not None:
        app.reloader = ConfigReloader(
            tables,
            config_path,
            settings=settings,
            current=lambda: app.queries.router.catalog,
            swap=app.swap_catalog,
            overrides=overrides,
        )
    return app
