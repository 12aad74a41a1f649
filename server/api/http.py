"""The HTTP port: Prometheus metrics, liveness/readiness probes and the REST shim."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from llmproxy.server.api.rest import RestShim


def build_http_app(
    registry: CollectorRegistry, is_serving: Callable[[], bool], rest: RestShim | None = None
) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"content-type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        serving = is_serving()
        return web.json_response(
            {"status": "serving" if serving else "not_serving"}, status=200 if serving else 503
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if rest is not None:
        rest.add_routes(app)
    return app
