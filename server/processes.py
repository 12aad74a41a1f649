"""The process plumbing under server/workers.py: what a worker runs, and the supervisor's
signal pipe and metrics directory."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection, wait
from typing import Any

from llmproxy.server.config import Settings
from llmproxy.server.observability.multiprocess import MULTIPROC_DIR_ENV

# What a worker sends the supervisor, once, when its ports are open.
READY = b"ready"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


# --- in the worker process ---------------------------------------------------------------


def run_worker(
    settings: Settings,
    config_path: str | None,
    overrides: Mapping[str, Any],
    index: int,
    ready: Connection,
) -> None:
    """A worker's whole life: the gateway, plus a note to the supervisor once it serves."""
    # Ctrl-C reaches the whole process group; the supervisor turns it into SIGTERM.
    # SIGHUP would kill a worker that has no reloader; serve() installs its own handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _stop_when_supervisor_dies()
    from llmproxy.server.main import run_process

    run_process(
        settings, config_path, overrides, worker=index, on_ready=lambda: ready.send_bytes(READY)
    )


def _stop_when_supervisor_dies() -> None:
    """Drain (SIGTERM to itself) if the supervisor is gone, even after a SIGKILL."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait([parent.sentinel])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


# --- in the supervisor ---------------------------------------------------------------


@contextlib.contextmanager
def metrics_dir() -> Iterator[str]:
    """A fresh directory for the workers' metric files: one left by an earlier run would
    add its counts. Set in the environment before any worker imports prometheus_client."""
    path = tempfile.mkdtemp(prefix="llmproxy-metrics-")
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


class SignalPipe:
    """Turns signals into bytes on a socket the supervisor's loop waits on, with its workers."""

    def __enter__(self) -> SignalPipe:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous = {sig: signal.signal(sig, _ignore) for sig in FORWARDED}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._reader.close()
        self._writer.close()

    def fileno(self) -> int:
        return self._reader.fileno()

    def read(self) -> bytes:
        try:
            return self._reader.recv(256)
        except BlockingIOError:
            return b""


def _ignore(signum: int, frame: object) -> None:
    """The C-level handler has already written the signal number to the wakeup socket."""
