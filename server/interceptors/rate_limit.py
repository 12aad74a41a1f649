"""Rate limits: requests and tokens per minute, per key and per key and model, as token buckets.

Before the handler runs, one backend call charges every bucket the request touches:
one request, and the prompt's tokens (counted with `core.tokens`, once per model
for ParallelQuery). When the stream's done events report the real usage, the
difference is settled. A stream that ends without usage keeps its up-front charge,
so cancelling early does not dodge a token limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from llmproxy.server.api import convert
from llmproxy.server.config.security import RateLimit, RateLimitsConfig
from llmproxy.server.core import tokens
from llmproxy.server.core.catalog import Catalog
from llmproxy.server.errors import (
    FieldViolation,
    QuotaViolation,
    RateLimiterUnavailableError,
    ResourceExhaustedError,
)
from llmproxy.server.interceptors.base import CallInterceptor
from llmproxy.server.interceptors.call import LLMPROXY_SERVICE, CallInfo
from llmproxy.server.interceptors.identity import Principal, current_principal
from llmproxy.server.observability.metrics import Metrics
from llmproxy.server.security.buckets import BackendUnavailableError, Bucket, BucketBackend

log = logging.getLogger(__name__)

_TOKEN_RPCS = frozenset({"Query", "ParallelQuery"})
_PER_MINUTE = {"requests": "requests_per_minute", "tokens": "tokens_per_minute"}


@dataclass(slots=True)
class Reservation:
    """Token buckets charged up front: (bucket, model it counts or "" for all, tokens charged)."""

    charged: list[tuple[Bucket, str, int]]


class RateLimitInterceptor(CallInterceptor):
    def __init__(
        self,
        config: RateLimitsConfig,
        backend: BucketBackend,
        metrics: Metrics,
        catalog: Callable[[], Catalog],
    ) -> None:
        super().__init__()
        self.config = config
        self.backend = backend
        self.metrics = metrics
        # The current catalog (it can be reloaded): the provider's model name picks the tokenizer.
        self.catalog = catalog
        self._down_until = 0.0
        self._last_warning = 0.0

    async def intercept_service(self, continuation, handler_call_details):
        if not handler_call_details.method.startswith(f"/{LLMPROXY_SERVICE}/"):
            return await continuation(handler_call_details)
        return await self.join(continuation, handler_call_details)

    async def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        principal = current_principal()
        buckets, reservation = self._plan(principal, call.rpc, request)
        if not buckets:
            return
        if time.monotonic() < self._down_until:
            return self._backend_down(None)
        try:
            denial = await self.backend.take(buckets)
        except BackendUnavailableError as error:
            return self._backend_down(error)
        if denial is None:
            call.reservation = reservation
            return
        bucket = denial.bucket
        self.metrics.rate_limited(bucket.limit, bucket.scope)
        per_minute = _PER_MINUTE[bucket.limit]
        raise ResourceExhaustedError(
            f"rate limit exceeded: {per_minute}={bucket.capacity:g} for {bucket.subject}; "
            f"retry in {denial.retry_after:.1f}s",
            retry_after=denial.retry_after,
            violations=[
                QuotaViolation(bucket.subject, f"{per_minute} limit of {bucket.capacity:g}")
            ],
            metadata={"limit": per_minute, "scope": bucket.scope},
        )

    def end(self, call: CallInfo) -> None:
        reservation: Reservation | None = call.reservation
        if reservation is None or not any(o.input_tokens or o.output_tokens for o in call.outcomes):
            return
        settle = []
        for bucket, model, charged in reservation.charged:
            used = sum(
                o.input_tokens + o.output_tokens
                for o in call.outcomes
                if not model or o.requested == model
            )
            if used != charged:
                settle.append(_with_cost(bucket, used - charged))
        if settle:
            self.backend.adjust_soon(settle)

    def _plan(
        self, principal: Principal, rpc: str, request: Any
    ) -> tuple[list[Bucket], Reservation | None]:
        default, own = self.config.default, principal.rate_limit
        # The key id is the Redis Cluster hash tag: all of a caller's buckets share a slot.
        key_id = principal.key_id.replace("{", "(").replace("}", ")")
        tag = f"{self.config.key_prefix}{{{key_id}}}"
        subject = f"key:{principal.key_id}"
        counts_tokens = rpc in _TOKEN_RPCS and request is not None
        models = _models(rpc, request) if counts_tokens else []
        # (requests/min, tokens/min, key prefix, subject, scope, model, prompt copies)
        scopes = [
            (
                _first(own, "requests_per_minute", default),
                _first(own, "tokens_per_minute", default),
                f"{tag}:",
                subject,
                "key",
                "",
                len(models) or 1,
            )
        ]
        for name in models:
            limit = self.config.models.get(name)
            if limit is not None:
                scopes.append(
                    (
                        limit.requests_per_minute,
                        limit.tokens_per_minute,
                        f"{tag}:m:{name}:",
                        f"{subject}/model:{name}",
                        "model",
                        name,
                        1,
                    )
                )
        buckets: list[Bucket] = []
        charged: list[tuple[Bucket, str, int]] = []
        token_caps = [s[1] for s in scopes if s[1]] if counts_tokens else []
        prompt = self._prompt_tokens(request, models[0], max(token_caps)) if token_caps else 0
        for rpm, tpm, prefix, subj, scope, model, copies in scopes:
            if rpm:
                buckets.append(Bucket(prefix + "r", rpm, 1, "requests", scope, subj))
            if tpm and counts_tokens:
                cost = prompt * copies
                bucket = Bucket(prefix + "t", tpm, cost, "tokens", scope, subj)
                buckets.append(bucket)
                charged.append((bucket, model, cost))
        return buckets, Reservation(charged) if charged else None

    def _prompt_tokens(self, request: Any, model: str, cap: float) -> int:
        violations: list[FieldViolation] = []
        messages = convert.to_messages(request.query, request.messages, violations)
        if violations:
            return 0  # the servicer refuses it as INVALID_ARGUMENT
        deployment = self.catalog().deployments.get(model)
        upstream = deployment.config.upstream if deployment is not None else model
        # Past the bucket's capacity the exact figure does not matter: stop counting there.
        counted = tokens.count_messages_until(upstream, messages, int(cap) + 1)
        return int(cap) + 1 if counted is None else counted

    def _backend_down(self, error: BackendUnavailableError | None) -> None:
        policy = self.config.on_backend_failure
        self.metrics.rate_limit_backend_error(self.backend.name, policy)
        now = time.monotonic()
        if error is not None:
            self._down_until = now + self.config.backend_retry_s
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning(
                "rate-limit backend unavailable; failing %s",
                policy,
                extra={"backend": self.backend.name, "policy": policy, "error": str(error or "")},
            )
        if policy == "closed":
            raise RateLimiterUnavailableError(
                "rate limiting is unavailable; try again shortly",
                metadata={"backend": self.backend.name},
            )


def _first(own: RateLimit | None, field: str, default: RateLimit) -> float | None:
    value = getattr(own, field) if own is not None else None
    return value if value is not None else getattr(default, field)


def _models(rpc: str, request: Any) -> list[str]:
    if rpc == "Query":
        return [request.model or "auto"]
    return list(dict.fromkeys(request.models)) or ["auto"]


def _with_cost(bucket: Bucket, cost: float) -> Bucket:
    return Bucket(bucket.key, bucket.capacity, cost, bucket.limit, bucket.scope, bucket.subject)
