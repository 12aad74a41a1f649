"""Authentication and authorisation: API keys, JWTs or client certificates, then scopes.

Decided from metadata in `intercept_service` where possible (a refused call gets a
handler of the same shape that only aborts, so nothing below it runs). The checks
that need the request (model scopes) or the TLS context (client certificate) run
in a thin guard in front of the handler, added only to calls that need them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import grpc

from llmproxy.server.api.error_status import to_rpc_status
from llmproxy.server.errors import LLMProxyError, PermissionDeniedError
from llmproxy.server.interceptors import handlers
from llmproxy.server.interceptors.base import CallInterceptor, drop_hooks_after, hooks_mark
from llmproxy.server.interceptors.call import LLMPROXY_SERVICE, CallInfo, current_request_id
from llmproxy.server.interceptors.identity import (
    ANONYMOUS_PRINCIPAL,
    Principal,
    current_principal,
    set_principal,
)
from llmproxy.server.observability.metrics import Metrics
from llmproxy.server.security.api_keys import KeyStore, unauthenticated
from llmproxy.server.security.jwt_tokens import JwtVerifier, looks_like_jwt

MISSING = "missing credentials: send `authorization: Bearer <key or token>` or `x-api-key: <key>`"
_MODEL_RPCS = frozenset({"Query", "ParallelQuery"})


def credential_from(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The bearer token or API key the caller sent, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif key == "x-api-key" and isinstance(value, str) and value.strip():
            return value.strip()
    return None


def requested_models(rpc: str, request: Any) -> list[str]:
    if rpc == "Query":
        return [request.model or "auto"]
    return list(request.models) or ["auto"]


def certificate_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The verified client certificate's common name, or its first subject alternative name."""
    auth = context.auth_context() or {}
    for prop in ("x509_common_name", "x509_subject_alternative_name"):
        values = auth.get(prop)
        if values:
            value = values[0]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class AuthInterceptor(CallInterceptor):
    def __init__(
        self,
        *,
        enabled: bool,
        keys: KeyStore,
        jwt: JwtVerifier | None,
        public_services: Sequence[str],
        client_cert_identity: bool,
        metrics: Metrics,
    ) -> None:
        super().__init__()
        self.enabled = enabled
        self.keys = keys
        self.jwt = jwt
        self.public = frozenset(public_services)
        self.client_cert_identity = client_cert_identity
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        service, rpc = handlers.split_method(handler_call_details.method)
        if service in self.public:
            return await continuation(handler_call_details)
        if not self.enabled:
            # Installed only to name callers by their client certificate: in `begin`.
            return await self.join(continuation, handler_call_details)
        credential = credential_from(handler_call_details.invocation_metadata)
        if credential is None:
            if self.client_cert_identity:
                # Decided in `begin`, where the TLS context is visible.
                return await self.join(continuation, handler_call_details)
            error = unauthenticated(MISSING, "missing_credentials")
            return await self._refuse(continuation, handler_call_details, error)
        try:
            principal = self._verify(credential)
            # Known from here on, so a refusal for scope is logged with the key id.
            set_principal(principal)
            self._check_rpc(principal, rpc)
        except LLMProxyError as error:
            return await self._refuse(continuation, handler_call_details, error)
        if principal.models is None or service != LLMPROXY_SERVICE or rpc not in _MODEL_RPCS:
            return await continuation(handler_call_details)
        return await self.join(continuation, handler_call_details)  # model scopes: in `begin`

    def begin(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        try:
            self._check_call(call, request, context)
        except LLMProxyError as error:
            self.metrics.auth_failure(error.metadata.get("cause", "other"))
            raise

    def _check_call(self, call: CallInfo, request: Any, context: grpc.aio.ServicerContext) -> None:
        principal = current_principal()
        if principal is ANONYMOUS_PRINCIPAL:  # no credential was sent: the certificate, then
            principal = self._from_certificate(context)
            if principal is None:
                return
            set_principal(principal)
            call.key_id = principal.key_id
            if not self.enabled:
                return
            self._check_rpc(principal, call.rpc)
        self._check_models(principal, call.rpc, request)

    def _from_certificate(self, context: grpc.aio.ServicerContext) -> Principal | None:
        identity = certificate_identity(context)
        if identity is None:
            if self.enabled:
                raise unauthenticated(MISSING, "missing_credentials")
            return None
        stored = self.keys.by_id(identity)
        if stored is not None:
            return self.keys.check_expiry(stored, time.time())
        return Principal(identity, method="client_cert", sees_all_usage=False)

    async def _refuse(self, continuation, handler_call_details, error: LLMProxyError):
        """A handler of the real one's shape that only aborts; nothing after us runs."""
        self.metrics.auth_failure(error.metadata.get("cause", "other"))
        mark = hooks_mark()
        handler = await continuation(handler_call_details)
        drop_hooks_after(mark)
        if handler is None:
            return None
        return handlers.aborting(handler, lambda: to_rpc_status(error, current_request_id()))

    def _verify(self, credential: str) -> Principal:
        now = time.time()
        stored = self.keys.find(credential)
        if stored is not None:
            return self.keys.check_expiry(stored, now)
        if self.jwt is not None and looks_like_jwt(credential):
            return self.jwt.verify(credential, now)
        # Never echo what was sent: it may be a real key with a typo.
        raise unauthenticated("invalid API key", "invalid_key")

    @staticmethod
    def _check_rpc(principal: Principal, rpc: str) -> None:
        if not principal.may_call_rpc(rpc):
            raise PermissionDeniedError(
                f"key {principal.key_id!r} may not call {rpc}",
                metadata={"cause": "rpc_not_allowed", "key_id": principal.key_id},
            )

    @staticmethod
    def _check_models(principal: Principal, rpc: str, request: Any) -> None:
        if request is None or rpc not in _MODEL_RPCS:
            return
        for name in requested_models(rpc, request):
            if not principal.may_use_model(name):
                raise PermissionDeniedError(
                    f"key {principal.key_id!r} may not use model {name!r}",
                    metadata={"cause": "model_not_allowed", "key_id": principal.key_id},
                )
