"""Reads the YAML file, interpolates ${ENV} references, and validates the whole tree once."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmproxy.server.config.settings import Settings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


DEFAULT_CONFIG: dict[str, Any] = {
    "providers": [
        {"name": "mock", "type": "mock", "options": {"ttft_ms": 20, "tokens_per_s": 200}},
    ],
    "models": [
        {
            "name": "mock-fast",
            "provider": "mock",
            "upstream_model": "mock-fast",
            "task_types": ["generation", "summarization", "code"],
            "context_window": 8192,
            "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4},
        },
        {
            "name": "mock-smart",
            "provider": "mock",
            "upstream_model": "mock-smart",
            "task_types": ["generation", "analysis", "code"],
            "context_window": 32768,
            "price": {"input_per_mtok": 1.0, "output_per_mtok": 4.0},
        },
    ],
}


def interpolate(value: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ${NAME} and ${NAME:-default} in every string; a missing variable is an error."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    return value


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {loc}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load the YAML file (or the embedded default) with `overrides` (e.g. CLI flags) on top.

    LLMPROXY_* environment variables win over both (see Settings).
    """
    env = os.environ if env is None else env
    if path is None:
        raw: dict[str, Any] = {k: v for k, v in DEFAULT_CONFIG.items()}
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = interpolate(raw, env)
    _merge(raw, dict(overrides or {}))
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
