"""Credentials and limits: API keys, JWTs, client certificates and token buckets."""
