"""Deployment files stay consistent with the code: config loads, probes and dashboards match."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import yaml

from llmproxy.server.config import load_settings
from tests.support.running import running_client, settings_for

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_config_is_valid():
    settings = load_settings(DEPLOY / "llmproxy.yaml", env={})
    assert settings.server.grpc_port == 50051


def test_kubernetes_probes_use_grpc_health_on_the_grpc_port():
    deployment = yaml.safe_load((DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    settings = load_settings(DEPLOY / "llmproxy.yaml", env={})
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == settings.server.grpc_port
    assert container["readinessProbe"]["grpc"]["service"] == "llmproxy.v1.LLMProxy"
    assert spec["terminationGracePeriodSeconds"] > (
        settings.server.grace_period_s + settings.server.drain_delay_s
    )


async def test_dashboard_queries_only_metrics_the_server_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "llmproxy-dashboard.json").read_text())
    wanted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"llmproxy_[a-z_]+", target["expr"])
    }
    async with running_client(settings_for()) as (app, client):
        await client.query("hi", model="mock-fast")
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{app.http_port}/metrics") as response,
        ):
            exported = await response.text()
    names = set(re.findall(r"^# TYPE (llmproxy_[a-z_]+)", exported, re.M))
    series = {n for n in wanted if n.endswith("_bucket")}
    missing = {n for n in wanted - series if n not in names} | {
        n for n in series if n.removesuffix("_bucket") not in names
    }
    assert missing == set()
