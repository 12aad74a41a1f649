"""Listener and upstream HTTP client settings."""

from __future__ import annotations

from pydantic import Field

from llmproxy.server.config.base import Section


class ServerConfig(Section):
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


class HttpClientConfig(Section):
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    pool_timeout_s: float = Field(10.0, gt=0)
    max_connections: int = Field(512, ge=1)
    keepalive_expiry_s: float = Field(60.0, ge=0)
