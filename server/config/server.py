"""Listener and upstream HTTP client settings."""

from __future__ import annotations

import os
from typing import Self

from pydantic import Field, model_validator

from llmproxy.server.config.base import Section


class ServerConfig(Section):
    """The listeners, draining, and how many gateway processes share them.

    `workers` > 1 runs that many processes, each with its own event loop, behind one
    supervisor (see server/workers.py); they share the gRPC and HTTP ports through
    SO_REUSEPORT, so both must be fixed (not 0). `workers: 0` means one per CPU the
    process may run on. Metrics are summed over the workers. State kept in memory is
    per worker: with the `memory` backends, each worker has its own rate-limit
    buckets (a limit is enforced per worker, so up to `workers` times as much gets
    through), its own response cache, and its own budget reservations (a budget can
    be overspent up to `workers` times); the redis and postgres backends share them.
    """

    host: str = "0.0.0.0"
    grpc_port: int = Field(50051, ge=0, le=65535)
    # Serves /metrics, /healthz and the REST shim; 0 picks a free port, -1 disables it.
    http_port: int = Field(8080, ge=-1, le=65535)
    grace_period_s: float = Field(20.0, ge=0)
    # Health reports NOT_SERVING this long before new RPCs are refused, so load balancers
    # and meshes stop routing here first.
    drain_delay_s: float = Field(0.0, ge=0)
    reflection: bool = True
    # grpc-gateway-style JSON routes (POST /api/query, ...) on the HTTP port.
    rest_shim: bool = True
    max_concurrent_rpcs: int | None = Field(None, ge=1)
    # Status health checks are cached this long and never run on a Query's path.
    health_check_ttl_s: float = Field(10.0, ge=0)
    health_check_timeout_s: float = Field(5.0, gt=0)
    # Background re-checks that keep llmproxy_model_availability current; 0 turns them off.
    health_check_interval_s: float = Field(30.0, ge=0)
    # Gateway processes: 1 runs in this process, 0 means one per CPU (see the docstring).
    workers: int = Field(1, ge=0)

    @model_validator(mode="after")
    def check_shared_ports(self) -> Self:
        if self.workers != 1:
            for key, port in (("grpc_port", self.grpc_port), ("http_port", self.http_port)):
                if port == 0:
                    raise ValueError(
                        f"server.{key} must be a fixed port (not 0) when server.workers is "
                        f"{self.workers}: the worker processes share it"
                    )
        return self

    @property
    def worker_count(self) -> int:
        """How many gateway processes `workers` means on this machine."""
        if self.workers:
            return self.workers
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1


class HttpClientConfig(Section):
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    pool_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(512, ge=1)
    keepalive_expiry_s: float = Field(60.0, ge=0)
