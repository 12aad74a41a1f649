"""The OpenTelemetry tracer provider: built only when `tracing.enabled`, exporting over OTLP.

The exporter reads the standard OTEL_EXPORTER_OTLP_* variables and the resource
reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES (service name "llmproxy" when
unset). A provider the process already installed (opentelemetry-instrument, or a
test with an in-memory exporter) is used as it is. With tracing off nothing here
is even imported.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

log = logging.getLogger(__name__)


def tracer_provider() -> TracerProvider:
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "llmproxy"}))
    provider = TracerProvider(resource=resource)
    # Batched, exported off the event loop by the SDK's worker thread; flushed at exit.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Global, so the per-attempt spans in the core (API tracer) reach the same provider.
    trace.set_tracer_provider(provider)
    log.info("tracing on: exporting spans over OTLP")
    return provider
