"""Python clients for llmproxy: `AsyncLLMProxyClient` (grpc.aio) and `LLMProxyClient` (sync)."""

from llmproxy.client.client import AsyncLLMProxyClient, LLMProxyClient, QueryResult

__all__ = ["AsyncLLMProxyClient", "LLMProxyClient", "QueryResult"]
