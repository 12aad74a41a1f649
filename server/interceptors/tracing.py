"""Server spans: opentelemetry-instrumentation-grpc's aio interceptor, on the App's provider.

It continues the caller's W3C trace context from the `traceparent` metadata, wraps
a streaming RPC's whole generator in the span, and records the status code (our
aborts go through `context.abort`, which its context wrapper sees). Only imported
and installed when `tracing.enabled`.
"""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.sdk.trace import TracerProvider


def tracing_interceptor(provider: TracerProvider) -> grpc.aio.ServerInterceptor:
    """The instrumentation's own interceptor (a grpc.aio.ServerInterceptor), on `provider`."""
    return aio_server_interceptor(tracer_provider=provider)
