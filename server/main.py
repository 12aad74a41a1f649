"""Runs the gateway until SIGTERM or SIGINT, then drains it gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal

from llmproxy.server.app import build_app
from llmproxy.server.config import Settings
from llmproxy.server.logs import configure_logging

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    app = build_app(settings)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening",
        extra={
            "grpc_port": app.grpc_port,
            "http_port": app.http_port,
            "models": list(app.catalog.deployments),
        },
    )
    try:
        await stop.wait()
        log.info(
            "shutdown signal received; draining",
            extra={"grace_period_s": settings.server.grace_period_s},
        )
    finally:
        await app.stop()


def run(settings: Settings) -> None:
    configure_logging(settings.logging)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(serve(settings))
    else:
        uvloop.run(serve(settings))
