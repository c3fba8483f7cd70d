"""Prometheus: metric names, the rules under promtool, and a real Prometheus scraping a server.

promtool and prometheus come from Debian's `prometheus` package (`make prometheus`, which
`make test` runs). The tests that run them are `slow`, so `make test-fast` needs neither;
when they are missing, those tests fail saying how to install them.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from modelcycle.monitoring.drift_service import DriftGauges
from modelcycle.serving.metrics import ServerMetrics
from server_process import free_port, require_program, serve_command, started
from serving_fixtures import ServedWorkspace

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "modelcycle.json"
SERIES = re.compile(r"\b(modelcycle[_:][a-z0-9_:]+)")
SCRAPE_TIMEOUT = 60.0
BOUNDED_LABELS = {"route", "status", "model", "alias", "version", "feature"}


def _registry() -> CollectorRegistry:
    registry = ServerMetrics.create().registry
    DriftGauges.create(registry)
    return registry


def _exposed_series() -> set[str]:
    """Every sample name the server's registry can expose (with _total, _bucket...)."""
    names = set()
    for family in _registry().collect():
        names.add(family.name)
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
        }.get(family.type, ("",))
        names.update(family.name + s for s in suffixes)
    return names


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_metric_names_follow_prometheus_conventions() -> None:
    for family in _registry().collect():
        assert family.name.startswith("modelcycle_"), family.name
        if family.type == "counter":  # exposed as NAME_total
            assert not family.name.endswith("_total"), family.name
        if "duration" in family.name or "timestamp" in family.name:
            assert family.name.endswith("_seconds"), family.name
    labels = {
        label
        for family in _registry().collect()
        for sample in family.samples
        for label in sample.labels
    }
    assert labels <= BOUNDED_LABELS | {"le"}


def test_rules_and_dashboard_only_use_series_the_server_exposes() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = _exposed_series() | recorded
    expressions = [rule["expr"] for rule in _rules()]
    dashboard = json.loads(DASHBOARD.read_text())
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in expressions for name in SERIES.findall(expr)}
    assert used and used <= known, sorted(used - known)
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts == {
        "ModelcycleHighErrorRate",
        "ModelcycleLatencyOverBudget",
        "ModelcycleDriftDetected",
        "ModelcycleModelNotReady",
    }


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    command = [require_program("promtool"), *args]
    return subprocess.run(
        command, cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.slow
def test_promtool_checks_the_rules_and_the_config() -> None:
    for args in (("check", "rules", "rules.yml"), ("check", "config", "prometheus.yml")):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_promtool_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _prometheus_config(path: Path, target: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "scrape_configs": [{"job_name": "modelcycle", "static_configs": [{"targets": [target]}]}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _query(client: httpx.Client, expr: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _wait_for(client: httpx.Client, expr: str, what: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + SCRAPE_TIMEOUT
    while time.monotonic() < deadline:
        result = _query(client, expr)
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: `{expr}` returned nothing within {SCRAPE_TIMEOUT:.0f} s")


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_server_and_evaluates_the_rules(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    prometheus = require_program("prometheus")
    port, prom_port = free_port(), free_port()
    serve = serve_command(
        served_workspace.root, port, "monitor.interval_seconds=1", "monitor.min_captures=5"
    )
    config = _prometheus_config(tmp_path / "prometheus.yml", f"127.0.0.1:{port}")
    prom = [
        prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    server_url, prom_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{prom_port}"
    with (
        started(serve, tmp_path / "server.log", server_url, "/readyz") as server,
        started(prom, tmp_path / "prometheus.log", prom_url, "/-/ready") as prom_process,
        httpx.Client(base_url=server_url, timeout=10) as api,
        httpx.Client(base_url=prom_url, timeout=10) as client,
    ):
        context = f"{server.output(10)}\n{prom_process.output(10)}"
        up = _wait_for(client, 'up{job="modelcycle"} == 1', f"target not up; {context}")
        assert len(up) == 1
        # traffic after the first scrape and across several, so the counters visibly rise
        examples = [e["request"] for e in api.get("/v1/models/twins/examples").json()["examples"]]
        for n in range(40):  # bounded: 40 requests over about 4 s
            response = api.post("/v1/models/twins/predict", json=examples[n % len(examples)])
            assert response.status_code == 200, response.text
            time.sleep(0.1)
        requests = 'modelcycle_requests_total{model="twins",status="200"}'
        _wait_for(client, requests, "request counter not scraped")
        _wait_for(client, 'modelcycle_drift_captures{model="twins"}', "drift gauge not scraped")
        rate = _wait_for(
            client, 'modelcycle:requests:rate5m{model="twins"} > 0', "recording rule not evaluated"
        )
        assert float(rate[0]["value"][1]) > 0
        rules = client.get("/api/v1/rules").json()["data"]["groups"]
        states = {r["name"]: r for group in rules for r in group["rules"]}
        assert all(r["health"] == "ok" for r in states.values()), states
        assert states["ModelcycleModelNotReady"]["state"] == "inactive"
        assert states["ModelcycleHighErrorRate"]["state"] == "inactive"
