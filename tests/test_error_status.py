"""Every error class maps to a gRPC status, and details never leak secrets."""

from __future__ import annotations

import inspect

import grpc
from google.rpc import error_details_pb2

from llmproxy.server import errors
from llmproxy.server.api.error_status import CODES, code_for, to_rpc_status


def all_error_classes() -> list[type[errors.LLMProxyError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.LLMProxyError)
    ]


def test_every_error_class_has_an_explicit_code():
    missing = [cls.__name__ for cls in all_error_classes() if cls not in CODES]
    assert missing == []


def test_reasons_are_upper_snake():
    for cls in all_error_classes():
        assert cls.reason.isupper() and " " not in cls.reason, cls


def test_caller_is_never_blamed_for_our_provider_key():
    error = errors.UpstreamAuthError(
        "openai: upstream rejected the gateway's credentials", provider="openai", status=401
    )
    assert code_for(error) not in (
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )


def test_details_carry_error_info_request_info_and_retry_info():
    error = errors.UpstreamRateLimitedError("slow down", provider="p", status=429, retry_after=1.5)
    status = to_rpc_status(error, "rid-1")
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    unpacked = {}
    for detail in status.details:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RequestInfo,
            error_details_pb2.RetryInfo,
        ):
            if detail.Is(cls.DESCRIPTOR):
                msg = cls()
                detail.Unpack(msg)
                unpacked[cls] = msg
    assert unpacked[error_details_pb2.ErrorInfo].reason == "UPSTREAM_RATE_LIMITED"
    assert unpacked[error_details_pb2.ErrorInfo].metadata["provider"] == "p"
    assert unpacked[error_details_pb2.RequestInfo].request_id == "rid-1"
    assert unpacked[error_details_pb2.RetryInfo].retry_delay.ToMilliseconds() == 1500
