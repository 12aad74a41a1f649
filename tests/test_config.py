"""Configuration: YAML + ${ENV} + LLMPROXY_* variables, validated with messages naming keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmproxy.server.config import ConfigError, load_settings

BASE = """
providers:
  - {name: openai, type: openai_compatible, base_url: "http://127.0.0.1:1/v1",
     api_keys: ["${OPENAI_API_KEY}"]}
models:
  - {name: gpt-4o-mini, provider: openai, upstream_model: gpt-4o-mini, task_types: [generation]}
"""


def write(tmp_path, text: str):
    path = tmp_path / "llmproxy.yaml"
    path.write_text(text)
    return path


def test_embedded_default_has_two_mock_models():
    settings = load_settings(env={})
    assert [m.name for m in settings.models] == ["mock-fast", "mock-smart"]
    assert settings.providers[0].type == "mock"
    assert not settings.auth.enabled


def test_env_interpolation_keeps_secrets_hidden(tmp_path):
    settings = load_settings(write(tmp_path, BASE), env={"OPENAI_API_KEY": "sk-secret-value"})
    key = settings.providers[0].api_keys[0]
    assert key.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(settings) and "sk-secret-value" not in str(settings)


def test_missing_env_var_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"providers\[0\]\.api_keys\[0\].*OPENAI_API_KEY"):
        load_settings(write(tmp_path, BASE), env={})


def test_env_default_syntax(tmp_path):
    text = BASE.replace("${OPENAI_API_KEY}", "${OPENAI_API_KEY:-fallback}")
    settings = load_settings(write(tmp_path, text), env={})
    assert settings.providers[0].api_keys[0].get_secret_value() == "fallback"


def test_llmproxy_env_vars_override_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMPROXY_SERVER__GRPC_PORT", "6000")
    monkeypatch.setenv("LLMPROXY_SERVER__GRACE_PERIOD_S", "3.5")
    text = BASE + "server: {grpc_port: 7000, http_port: 9000}\n"
    settings = load_settings(write(tmp_path, text), env={"OPENAI_API_KEY": "k"})
    assert settings.server.grpc_port == 6000
    assert settings.server.grace_period_s == 3.5
    assert settings.server.http_port == 9000


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("server: {grpc_prot: 1}\n", r"server\.grpc_prot"),
        ("server: {grpc_port: 70000}\n", r"server\.grpc_port"),
        (
            "models:\n  - {name: m, provider: nope}\n",
            r"models\[0\]\.provider: unknown provider 'nope'",
        ),
        (
            "groups:\n  - {name: g, members: [{model: ghost}]}\n",
            r"groups\[0\]\.members\[0\]\.model",
        ),
        ("routing: {auto: {default: [ghost]}}\n", r"routing\.auto\.default\[0\]"),
        (
            "models:\n  - {name: m, provider: openai, price: {input_per_mtok: -1}}\n",
            r"models\.0\.price\.input_per_mtok",
        ),
    ],
)
def test_invalid_config_names_the_bad_key(tmp_path, extra, message):
    # A later top-level key replaces BASE's (YAML keeps the last duplicate).
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, BASE + extra), env={"OPENAI_API_KEY": "k"})


def test_duplicate_model_names_rejected(tmp_path):
    text = BASE + "  - {name: gpt-4o-mini, provider: openai}\n"
    with pytest.raises(ConfigError, match=r"models\[1\]\.name: duplicate name 'gpt-4o-mini'"):
        load_settings(write(tmp_path, text), env={"OPENAI_API_KEY": "k"})


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "providers: [unclosed"))


def test_serve_refuses_a_bad_config_with_the_key_named(tmp_path):
    path = write(tmp_path, "server: {grpc_port: -5}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "llmproxy.client.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "server.grpc_port" in proc.stderr
