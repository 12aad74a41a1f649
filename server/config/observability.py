"""Logs and traces."""

from __future__ import annotations

from typing import Literal

from llmproxy.server.config.base import Section


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    # Prompts and answers are never logged unless this is switched on.
    log_content: bool = False


class TracingConfig(Section):
    # Off costs nothing; on, spans export over OTLP per the standard OTEL_* variables.
    enabled: bool = False
