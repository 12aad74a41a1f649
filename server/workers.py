"""Runs several gateway processes on the same ports: starts them, passes signals on, restarts them.

One process is bound by its single event loop; `server.workers` runs that many
gateways, each a fresh interpreter (multiprocessing's spawn context) running the
ordinary single-process gateway (main.run_process) on uvloop. They all bind the
gRPC and HTTP ports with SO_REUSEPORT and the kernel spreads connections over them.

This supervisor builds no app and serves nothing. SIGTERM and SIGINT are passed on
as SIGTERM: each worker drains as a lone gateway would, and the supervisor exits 0
once all have stopped (or kills what is left after the grace period and exits 1).
SIGHUP is passed on: each worker reloads its routing table. A worker that exits
while the supervisor runs is restarted after a backoff. One that exits before it
serves has failed to start: at the first start (a bad port, a bad config) the
supervisor gives up at once; later, after MAX_FAILED_STARTS in a row. Giving up
stops the other workers and exits 1.

Metrics are summed over workers through prometheus_client's multiprocess mode
(observability/multiprocess.py); its directory is made here and removed at exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from llmproxy.server.config import ConfigError, Settings, load_settings
from llmproxy.server.logs import configure_logging
from llmproxy.server.processes import READY, SignalPipe, metrics_dir, run_worker

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
# A worker that served this long before it died starts its backoff afresh.
STABLE_AFTER_S = 30.0
MAX_FAILED_STARTS = 5
# Beyond drain_delay_s + grace_period_s: the ledger's last flush and the process exit.
STOP_MARGIN_S = 10.0


@dataclass
class _Worker:
    index: int
    process: BaseProcess | None = None
    # Read end of a pipe the worker writes once when it serves; None once read.
    ready_pipe: Connection | None = None
    ready: bool = False
    started_at: float = 0.0
    failed_starts: int = 0  # in a row: exits before it served
    crashes: int = 0  # in a row: exits within STABLE_AFTER_S of serving
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        config_path: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.overrides = dict(overrides or {})
        self._context = multiprocessing.get_context("spawn")
        self._workers = [_Worker(i) for i in range(settings.server.worker_count)]
        self._metrics_path = ""
        self._ever_served = False
        self._stopping = False
        # When the workers get SIGKILL if they have not drained; None once they got it.
        self._stop_deadline: float | None = None
        self._gave_up = False
        self._unclean = False

    def run(self) -> int:
        """Runs the workers until a stop signal or giving up; returns the exit status."""
        listener = configure_logging(self.settings.logging)
        try:
            with metrics_dir() as path, SignalPipe() as signals:
                self._metrics_path = path
                log.info(
                    "starting workers",
                    extra={"workers": len(self._workers), "metrics_dir": path},
                )
                warn_about_per_worker_state(self.settings)
                for worker in self._workers:
                    self._start(worker, self.settings)
                self._loop(signals)
        finally:
            listener.stop()
        return 1 if self._gave_up or self._unclean else 0

    def _loop(self, signals: SignalPipe) -> None:
        while True:
            live = [w for w in self._workers if w.process is not None]
            if self._stopping and not live:
                return
            by_sentinel = {w.process.sentinel: w for w in live if w.process is not None}
            by_pipe = {w.ready_pipe: w for w in live if w.ready_pipe is not None}
            for ready in wait([signals, *by_sentinel, *by_pipe], self._next_timeout()):
                if ready is signals:
                    for signum in signals.read():
                        self._on_signal(signum)
                elif ready in by_pipe:
                    # Skipped if its worker's exit, handled just before, closed it.
                    if by_pipe[ready].ready_pipe is ready:
                        self._on_ready_pipe(by_pipe[ready])
                else:
                    self._on_exit(by_sentinel[ready])
            now = time.monotonic()
            for worker in self._workers:
                if worker.restart_at is not None and worker.restart_at <= now:
                    self._start(worker, self._settings_for_restart())
            if self._stop_deadline is not None and now >= self._stop_deadline:
                self._kill_stragglers()

    def _next_timeout(self) -> float | None:
        times = [w.restart_at for w in self._workers if w.restart_at is not None]
        if self._stop_deadline is not None:
            times.append(self._stop_deadline)
        return max(min(times) - time.monotonic(), 0.0) if times else None

    # --- workers ------------------------------------------------------------------

    def _start(self, worker: _Worker, settings: Settings) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=run_worker,
            args=(settings, self.config_path, self.overrides, worker.index, writer),
            name=f"llmproxy-worker-{worker.index}",
            # If the supervisor itself fails, multiprocessing's exit hook sends SIGTERM.
            daemon=True,
        )
        process.start()
        writer.close()  # the worker holds the only write end
        worker.process, worker.ready_pipe, worker.ready = process, reader, False
        worker.started_at, worker.restart_at = time.monotonic(), None
        log.info("worker started", extra={"worker": worker.index, "pid": process.pid})

    def _on_ready_pipe(self, worker: _Worker) -> None:
        pipe = worker.ready_pipe
        assert pipe is not None
        try:
            message = pipe.recv_bytes()
        except (EOFError, OSError):
            message = b""  # it exited first; its sentinel says so
        pipe.close()
        worker.ready_pipe = None
        if message != READY or worker.process is None:
            return
        worker.ready, worker.failed_starts = True, 0
        self._ever_served = True
        log.info("worker serving", extra={"worker": worker.index, "pid": worker.process.pid})
        if all(w.ready for w in self._workers):
            log.info(
                "all workers serving",
                extra={
                    "workers": len(self._workers),
                    "grpc_port": self.settings.server.grpc_port,
                    "http_port": self.settings.server.http_port,
                },
            )

    def _on_exit(self, worker: _Worker) -> None:
        process = worker.process
        assert process is not None
        process.join()
        code, pid = process.exitcode, process.pid
        process.close()
        if worker.ready_pipe is not None:
            worker.ready_pipe.close()
        worker.process, worker.ready_pipe = None, None
        # Its live gauges (active requests, availability, circuits) stop counting.
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, self._metrics_path)
        fields = {"worker": worker.index, "pid": pid, "exit": describe_exit(code)}
        if self._stopping:
            # SIGTERM before its handlers were installed: it had not served yet.
            if code not in (0, -signal.SIGTERM):
                self._unclean = True
            log.info("worker stopped", extra=fields)
            return
        now = time.monotonic()
        if not worker.ready:
            worker.failed_starts += 1
            if not self._ever_served or worker.failed_starts >= MAX_FAILED_STARTS:
                self._give_up(worker, fields)
                return
            delay = backoff(worker.failed_starts)
        else:
            stable = now - worker.started_at >= STABLE_AFTER_S
            worker.crashes = 1 if stable else worker.crashes + 1
            delay = backoff(worker.crashes)
        worker.restart_at = now + delay
        log.error(
            "worker exited unexpectedly; restarting it in %.1f s",
            delay,
            extra={**fields, "served": worker.ready},
        )

    def _give_up(self, worker: _Worker, fields: dict[str, Any]) -> None:
        self._gave_up = True
        tries = "" if worker.failed_starts == 1 else f" {worker.failed_starts} times in a row"
        log.error(
            "worker %d failed to start%s (%s); giving up: stopping the other workers",
            worker.index,
            tries,
            fields["exit"],
            extra=fields,
        )
        self._stop()

    def _settings_for_restart(self) -> Settings:
        """The routing sections as the file has them now: the running workers reload them
        on SIGHUP and file changes, and a restarted one must serve the same table."""
        if self.config_path is None:
            return self.settings
        from llmproxy.server.reload import ROUTING_SECTIONS

        try:
            fresh = load_settings(self.config_path, overrides=self.overrides)
        except ConfigError as error:
            log.error("config file invalid; the restarted worker uses the last good one: %s", error)
            return self.settings
        routing = {name: getattr(fresh, name) for name in ROUTING_SECTIONS}
        self.settings = self.settings.model_copy(update=routing)
        return self.settings

    # --- signals and stopping ---------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            pids = self._signal_workers(signal.SIGHUP)
            log.info("SIGHUP passed on to the workers", extra={"pids": pids})
        elif not self._stopping:
            log.info("%s received; stopping the workers", signal.Signals(signum).name)
            self._stop()

    def _stop(self) -> None:
        self._stopping = True
        server = self.settings.server
        self._stop_deadline = (
            time.monotonic() + server.drain_delay_s + server.grace_period_s + STOP_MARGIN_S
        )
        for worker in self._workers:
            worker.restart_at = None
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, signum: int) -> list[int]:
        pids = []
        for worker in self._workers:
            if worker.process is not None and worker.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)
                    pids.append(worker.process.pid)
        return pids

    def _kill_stragglers(self) -> None:
        pids = self._signal_workers(signal.SIGKILL)
        if pids:
            self._unclean = True
            log.error("workers still running after the grace period; killed", extra={"pids": pids})
        self._stop_deadline = None  # once; their sentinels end the loop


def backoff(failures: int) -> float:
    return min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_MAX_S)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        return signal.Signals(-code).name
    return f"exit code {code}"


def warn_about_per_worker_state(settings: Settings) -> None:
    """One warning naming what each worker keeps to itself, when something is configured."""
    kept: list[str] = []
    limits = settings.rate_limits
    own_limits = any(k.rate_limit and k.rate_limit.is_set for k in settings.auth.api_keys)
    if limits.backend == "memory" and (limits.any_limit or own_limits):
        kept.append("rate limits (rate_limits.backend: memory; each worker lets a full limit by)")
    if settings.budgets and settings.budget_store.backend == "memory":
        kept.append("budgets (budget_store.backend: memory; each worker may spend a full budget)")
    cache = settings.cache
    if cache.exact.backend == "memory" and (cache.exact.enabled or cache.semantic.enabled):
        kept.append("the response cache (cache.exact.backend: memory; fewer hits)")
    if kept:
        log.warning(
            "server.workers is %d and these are kept per worker, not shared: %s. "
            "The redis backends (postgres for budgets) share them.",
            settings.server.worker_count,
            "; ".join(kept),
        )
