"""Metrics and tracing support the interceptors and the core report through."""
