"""Every Prometheus instrument the gateway exports, in one class registered on the App's registry.

Label values are bounded: models and providers come from the config (anything else
is reported as "other"), error types from the error hierarchy's reasons, codes from
grpc.StatusCode. No key, prompt or other caller text ever becomes a label.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmproxy.server import errors

OTHER = "other"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30)
# The gateway's own time on a request, in seconds: tens of microseconds to tens of ms.
OVERHEAD_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
# Why auth refused a call (the ErrorInfo metadata "cause" of its error).
AUTH_CAUSES = frozenset(
    {
        "missing_credentials",
        "invalid_key",
        "expired_key",
        "invalid_token",
        "expired_token",
        "wrong_audience",
        "wrong_issuer",
        "rpc_not_allowed",
        "model_not_allowed",
    }
)


def error_reasons() -> frozenset[str]:
    """Every `reason` in the error hierarchy, lower-cased: the bounded set of error types."""
    seen: set[str] = set()
    pending: list[type[errors.LLMProxyError]] = [errors.LLMProxyError]
    while pending:
        cls = pending.pop()
        seen.add(cls.reason.lower())
        pending.extend(cls.__subclasses__())
    return frozenset(seen)


class Metrics:
    """The instruments, plus small methods for the events other layers report.

    Interceptors record per-RPC figures (requests, durations, tokens, TTFT, cache
    hits, overhead, rate-limit rejections); the executor reports upstream errors,
    retries, fallbacks and circuit changes through `upstream_error`, `retry`,
    `fallback` and `circuit`; availability comes from health checks.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        models: Iterable[str] = (),
        providers: Iterable[str] = (),
    ) -> None:
        self.models = frozenset(models)
        self.providers = frozenset(providers)
        self.reasons = error_reasons()
        r = registry
        self.requests = Counter(
            "llmproxy_requests_total",
            "RPCs handled, by served model (one per model for ParallelQuery) and status code.",
            ["model", "provider", "rpc", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "llmproxy_request_duration_seconds",
            "Wall time of an RPC (a stream: until its last message), by served model.",
            ["rpc", "model", "provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "llmproxy_time_to_first_token_seconds",
            "From the RPC's arrival to the first token, as reported in the stream's done event.",
            ["model", "provider"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "llmproxy_tokens_processed_total",
            "Tokens in prompts (type=input) and answers (type=output).",
            ["model", "provider", "type"],
            registry=r,
        )
        self.cache_hits = Counter(
            "llmproxy_cache_hits_total",
            "Answers served from the gateway's cache (kind=exact|semantic).",
            ["model", "kind"],
            registry=r,
        )
        # Gauge modes apply only with several workers (observability/multiprocess.py):
        # in-flight RPCs add up over the live workers; availability is 1 if any live
        # worker's last check passed; circuit state is the most open of any live worker.
        self.active_requests = Gauge(
            "llmproxy_active_requests",
            "RPCs in progress.",
            ["rpc"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.model_availability = Gauge(
            "llmproxy_model_availability",
            "1 when the model's last health check passed, else 0.",
            ["model", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.upstream_errors = Counter(
            "llmproxy_upstream_errors_total",
            "Failed upstream attempts, by error type.",
            ["provider", "model", "type"],
            registry=r,
        )
        self.retries = Counter(
            "llmproxy_retries_total",
            "Upstream attempts repeated on the same deployment.",
            ["provider", "model"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llmproxy_fallbacks_total",
            "Requests moved to another deployment after one failed.",
            ["from_model", "to_model"],
            registry=r,
        )
        self.hedges = Counter(
            "llmproxy_hedges_total",
            "Hedge attempts started because a deployment's first token was late.",
            ["provider", "model"],
            registry=r,
        )
        self.circuit_state = Gauge(
            "llmproxy_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
            ["model", "provider"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.rate_limit_rejections = Counter(
            "llmproxy_rate_limit_rejections_total",
            "Requests refused by the gateway's rate limits (limit=requests|tokens).",
            ["limit", "scope"],
            registry=r,
        )
        self.rate_limit_backend_errors = Counter(
            "llmproxy_rate_limit_backend_errors_total",
            "Rate-limit checks the backend could not answer; policy says what was done.",
            ["backend", "policy"],
            registry=r,
        )
        self.auth_failures = Counter(
            "llmproxy_auth_failures_total",
            "Calls refused by authentication or authorisation, by cause.",
            ["cause"],
            registry=r,
        )
        self.proxy_overhead = Histogram(
            "llmproxy_proxy_overhead_seconds",
            "Time the gateway itself added to a request (the done event's proxy_overhead_us).",
            ["rpc"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )

    # --- bounding --------------------------------------------------------------

    def model(self, name: str) -> str:
        return name if not name or name in self.models else OTHER

    def provider(self, name: str) -> str:
        return name if not name or name in self.providers else OTHER

    def reason(self, reason: str) -> str:
        reason = reason.lower()
        return reason if reason in self.reasons else OTHER

    # --- events reported by the routing layer -----------------------------------

    def upstream_error(self, provider: str, model: str, reason: str) -> None:
        """One failed upstream attempt; `reason` is the error's UPPER_SNAKE reason."""
        self.upstream_errors.labels(
            self.provider(provider), self.model(model), self.reason(reason)
        ).inc()

    def retry(self, provider: str, model: str) -> None:
        self.retries.labels(self.provider(provider), self.model(model)).inc()

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.labels(self.model(from_model), self.model(to_model)).inc()

    def circuit(self, model: str, provider: str, state: str) -> None:
        """`state` is closed, half_open or open."""
        self.circuit_state.labels(self.model(model), self.provider(provider)).set(
            CIRCUIT_STATES[state]
        )

    def hedge(self, provider: str, model: str) -> None:
        self.hedges.labels(self.provider(provider), self.model(model)).inc()

    def availability(self, model: str, provider: str, available: bool) -> None:
        self.model_availability.labels(self.model(model), self.provider(provider)).set(
            1 if available else 0
        )

    # --- events reported by the interceptors ------------------------------------

    def rate_limited(self, limit: str, scope: str) -> None:
        """limit: requests|tokens; scope: key|model."""
        self.rate_limit_rejections.labels(limit, scope).inc()

    def rate_limit_backend_error(self, backend: str, policy: str) -> None:
        """policy: open (served anyway) or closed (refused)."""
        self.rate_limit_backend_errors.labels(backend, policy).inc()

    def auth_failure(self, cause: str) -> None:
        self.auth_failures.labels(cause if cause in AUTH_CAUSES else OTHER).inc()
