"""gRPC server interceptors, one concern per module, composed in one fixed order here.

The chain, outermost first (each sees everything the ones after it do, and their refusals):

0. safety_net  an exception raised while the others pick the handler becomes INTERNAL
               with a request id, not UNKNOWN carrying its text.
1. tracing     (tracing.enabled) the server span: continues the caller's W3C trace
               context, so every later step, log line and upstream attempt is inside it.
2. access_log  one JSON line per RPC, including calls refused further in; it is the
               outermost call observer, so it owns the per-call record (request id,
               outcomes read once from the stream's done events) the others share.
3. metrics     Prometheus counts and histograms for every call, refused ones too.
4. refusals    (a usage ledger configured) a ledger record for each Query and
               ParallelQuery refused before the core, which records all the others.
5. auth        (auth.enabled, or mTLS identities) who is calling and what they may
               call; refuses before any limit is charged, so strangers cannot drain a
               caller's bucket. Health and reflection pass without credentials.
6. rate_limit  (any limit configured) charges the caller's buckets just before the
               handler and settles tokens after it, when usage is known.

A step that is switched off is not in the chain at all, so it costs nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from llmproxy.server.app import App

log = logging.getLogger(__name__)


def build_interceptors(app: App) -> list[grpc.aio.ServerInterceptor]:
    """The chain, outermost first."""
    from llmproxy.server.interceptors.access_log import AccessLogInterceptor
    from llmproxy.server.interceptors.metrics import MetricsInterceptor
    from llmproxy.server.interceptors.safety_net import SafetyNetInterceptor

    settings = app.settings
    chain: list[grpc.aio.ServerInterceptor] = [SafetyNetInterceptor()]
    if settings.tracing.enabled:
        from llmproxy.server.interceptors.tracing import tracing_interceptor
        from llmproxy.server.observability.tracing import tracer_provider

        chain.append(tracing_interceptor(tracer_provider()))
    chain.append(AccessLogInterceptor(log_content=settings.logging.log_content))
    chain.append(MetricsInterceptor(app.metrics))
    refusals = build_refusal_ledger(app)
    if refusals is not None:
        chain.append(refusals)
    auth = build_auth(app)
    if auth is not None:
        chain.append(auth)
    limits = build_rate_limits(app)
    if limits is not None:
        chain.append(limits)
    return chain


def build_refusal_ledger(app: App) -> grpc.aio.ServerInterceptor | None:
    from llmproxy.server.core.accounting.stage import UsageAccounting

    # The stage the query path records with: it tells the hook which calls it recorded.
    stage = app.queries.accounting
    if not isinstance(stage, UsageAccounting) or stage.ledger is None:
        return None
    from llmproxy.server.interceptors.refusals import RefusalLedgerInterceptor

    return RefusalLedgerInterceptor(stage)


def build_auth(app: App) -> grpc.aio.ServerInterceptor | None:
    from llmproxy.server.interceptors.auth import AuthInterceptor
    from llmproxy.server.security.api_keys import KeyStore
    from llmproxy.server.security.jwt_tokens import JwtVerifier

    config = app.settings.auth
    tls = app.settings.tls
    cert_identity = tls is not None and tls.client_cert_identity
    if not config.enabled:
        log.warning(
            "AUTHENTICATION IS DISABLED: every caller is anonymous and may call every model "
            "and RPC. Set auth.enabled: true with api_keys or jwt before exposing this port."
        )
        if not cert_identity:
            return None
    elif not (config.api_keys or config.jwt or cert_identity):
        log.warning("auth is enabled with no api_keys, jwt or client certificates: all refused")
    return AuthInterceptor(
        enabled=config.enabled,
        keys=KeyStore(config.api_keys),
        jwt=JwtVerifier(config.jwt) if config.jwt else None,
        public_services=config.public_services,
        client_cert_identity=cert_identity,
        metrics=app.metrics,
    )


def build_rate_limits(app: App) -> grpc.aio.ServerInterceptor | None:
    config = app.settings.rate_limits
    own_limits = any(k.rate_limit and k.rate_limit.is_set for k in app.settings.auth.api_keys)
    if not (config.any_limit or own_limits):
        return None
    from llmproxy.server.interceptors.rate_limit import RateLimitInterceptor
    from llmproxy.server.security.buckets import BucketBackend, MemoryBuckets

    backend: BucketBackend
    if config.backend == "redis":
        from llmproxy.server.security.redis_buckets import RedisBuckets

        backend = RedisBuckets(config.redis_url, timeout_s=config.redis_timeout_s)
    else:
        backend = MemoryBuckets()
    app.on_stop.append(backend.close)
    return RateLimitInterceptor(config, backend, app.metrics, lambda: app.catalog)
