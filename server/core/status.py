"""Per-deployment health: live checks run in parallel, cached briefly, off the query path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from llmproxy.server.core.catalog import Catalog
from llmproxy.server.core.deployments import Deployment, percentile
from llmproxy.server.errors import LLMProxyError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class HealthResult:
    available: bool
    latency_ms: float
    error: str = ""
    checked_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class ModelStatusView:
    name: str
    provider: str
    upstream_model: str
    task_types: list[str]
    health: HealthResult
    in_flight: int
    error_rate: float
    last_error: str
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    circuit_state: str = "closed"


# Told of every finished check: (model, provider, available), once per model of the provider.
HealthListener = Callable[[str, str, bool], None]


class StatusService:
    """One health check per provider at a time, shared by all callers waiting on it."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        ttl_s: float,
        timeout_s: float,
        on_result: HealthListener | None = None,
    ) -> None:
        self.catalog = catalog
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.on_result = on_result
        self._results: dict[str, tuple[float, HealthResult]] = {}
        self._running: dict[str, asyncio.Task[HealthResult]] = {}
        self._monitor: asyncio.Task[None] | None = None

    def start_monitor(self, interval_s: float) -> None:
        """Re-check every provider in the background, so availability stays current
        (metrics, Status) even when nobody calls Status."""
        if interval_s > 0 and self._monitor is None:
            self._monitor = asyncio.create_task(self._watch(interval_s))

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
            self._monitor = None

    async def _watch(self, interval_s: float) -> None:
        while True:
            try:
                await self.snapshot(refresh=True)
            except Exception:  # one bad round must not end the monitor for good
                log.exception("background health check failed")
            await asyncio.sleep(interval_s)

    async def snapshot(self, *, refresh: bool = False) -> list[ModelStatusView]:
        deployments = list(self.catalog.deployments.values())
        providers = {d.provider.name: d.provider for d in deployments}
        results = dict(
            zip(
                providers,
                await asyncio.gather(*(self._check(n, p, refresh) for n, p in providers.items())),
                strict=True,
            )
        )
        return [self._view(d, results[d.provider.name]) for d in deployments]

    def _check(self, name: str, provider, refresh: bool) -> asyncio.Future[HealthResult]:
        cached = self._results.get(name)
        if cached and not refresh and time.monotonic() - cached[0] < self.ttl_s:
            done: asyncio.Future[HealthResult] = asyncio.get_running_loop().create_future()
            done.set_result(cached[1])
            return done
        task = self._running.get(name)
        if task is None or task.done():
            task = asyncio.create_task(self._run_check(name, provider))
            self._running[name] = task
        # shield: one impatient caller must not cancel the check others wait on.
        return asyncio.shield(task)

    async def _run_check(self, name: str, provider) -> HealthResult:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                await provider.health_check()
            result = HealthResult(True, (time.perf_counter() - start) * 1000)
        except TimeoutError:
            result = HealthResult(
                False, (time.perf_counter() - start) * 1000, "health check timed out"
            )
        except LLMProxyError as error:
            # Messages are built without secrets (see errors.py), so they are safe to show.
            result = HealthResult(
                False, (time.perf_counter() - start) * 1000, f"{error.reason}: {error.message}"
            )
        except Exception:
            log.exception("health check of provider %s failed", name)
            result = HealthResult(False, (time.perf_counter() - start) * 1000, "INTERNAL")
        self._results[name] = (time.monotonic(), result)
        if self.on_result is not None:
            for d in self.catalog.deployments.values():
                if d.provider.name == name:
                    self.on_result(d.name, name, result.available)
        return result

    @staticmethod
    def _view(d: Deployment, health: HealthResult) -> ModelStatusView:
        latencies = list(d.stats.latencies_ms)
        ttfts = list(d.stats.ttfts_ms)
        return ModelStatusView(
            name=d.name,
            provider=d.provider_name,
            upstream_model=d.config.upstream,
            task_types=list(d.config.task_types),
            health=health,
            in_flight=d.stats.in_flight,
            error_rate=d.breaker.error_rate(),
            last_error=d.stats.last_error,
            latency_p50_ms=percentile(latencies, 0.5),
            latency_p95_ms=percentile(latencies, 0.95),
            ttft_p50_ms=percentile(ttfts, 0.5),
            ttft_p95_ms=percentile(ttfts, 0.95),
            circuit_state=d.breaker.state.value,
        )
