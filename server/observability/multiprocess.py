"""Metrics across worker processes: prometheus_client's multiprocess mode, used only with workers.

With `server.workers` > 1 the supervisor (server/workers.py) points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before any worker starts, so every
worker's prometheus_client keeps its values in memory-mapped files there (the
library decides this once, when it is imported). /metrics on any worker then reads
all those files: counters and histograms are summed over the workers, gauges
follow their `multiprocess_mode` (see observability/metrics.py).

Custom collectors (the ledger's counters) read state in their own process: on
/metrics they show the worker that answered the scrape, not the sum.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from llmproxy.server.config.server import ServerConfig

# prometheus_client's own switch, read by the library at import time.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def build_registries(server: ServerConfig) -> tuple[CollectorRegistry, CollectorRegistry]:
    """(exposed, instruments): the registry /metrics serves, and the one instruments join.

    One process: they are the same registry and nothing changes. Workers: the
    exposed registry reads every worker's files; the instruments' own registry is
    never served, or this worker's values would appear a second time.
    """
    exposed = CollectorRegistry()
    path = os.environ.get(MULTIPROC_DIR_ENV) if server.worker_count > 1 else None
    if not path:
        return exposed, exposed
    MultiProcessCollector(exposed, path)
    return exposed, CollectorRegistry()
