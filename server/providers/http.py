"""Builds the one pooled HTTP client each upstream gets.

httpx is the API; the transport is aiohttp's (httpx-aiohttp), which measured
about three times faster here than httpx's own for streamed responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from httpx_aiohttp import AiohttpTransport


@dataclass(slots=True, frozen=True)
class HttpClientSettings:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0
    pool_timeout_s: float = 10.0
    max_connections: int = 512
    keepalive_expiry_s: float = 60.0


def build_http_client(settings: HttpClientSettings, *, base_url: str = "") -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=settings.keepalive_expiry_s,
    )
    timeout = httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.connect_timeout_s,
        pool=settings.pool_timeout_s,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=timeout,
        limits=limits,
        trust_env=False,
    )
