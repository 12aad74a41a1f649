"""Typed, frozen configuration: one YAML file plus LLMPROXY_* environment variables."""

from llmproxy.server.config.loader import DEFAULT_CONFIG, ConfigError, load_settings
from llmproxy.server.config.settings import Settings

__all__ = ["DEFAULT_CONFIG", "ConfigError", "Settings", "load_settings"]
