"""The compose stack: every service, build and mounted file is there and wired together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_manifests import documents

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return documents(REPO / "deploy" / "compose.yaml")[0]


def test_compose_wires_api_mlflow_prometheus_grafana(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "mlflow", "prometheus", "grafana", "train"} <= set(services)
    assert services["api"]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "--port=5000" in services["mlflow"]["command"]
    assert services["train"]["profiles"] == ["train"]


def test_compose_passes_the_api_key_through_only_when_the_shell_has_one(
    compose: dict[str, Any],
) -> None:
    """A key given no value is the shell's, or unset in the container (the compose spec);
    `${MODELCYCLE_API_KEY:-}` set an empty key without one, and the server refuses that."""
    environment = compose["services"]["api"]["environment"]
    assert "MODELCYCLE_API_KEY" in environment
    assert environment["MODELCYCLE_API_KEY"] is None
    assert not any("MODELCYCLE_API_KEY" in str(v) for v in environment.values())


def test_compose_builds_and_mounts_only_files_that_exist(compose: dict[str, Any]) -> None:
    base = REPO / "deploy"
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            assert (base / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (base / source).exists(), f"{name} mounts missing {source}"


def test_prometheus_in_compose_scrapes_the_api_with_the_tested_rules(
    compose: dict[str, Any],
) -> None:
    config = documents(REPO / "deploy" / "prometheus" / "compose.yml")[0]
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    api_port = compose["services"]["api"]["ports"][0].split(":")[-1]
    assert targets == [f"api:{api_port}"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    assert mounts["./prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    assert config["rule_files"] == ["rules.yml"]
    # the loopback config the tests run with loads the same rules file
    tested = documents(REPO / "deploy" / "prometheus" / "prometheus.yml")[0]
    assert tested["rule_files"] == config["rule_files"]


def test_grafana_in_compose_reads_the_prometheus_service_and_the_dashboard(
    compose: dict[str, Any],
) -> None:
    sources = documents(REPO / "deploy/grafana/compose/datasources/prometheus.yml")[0]
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"
    provider = documents(REPO / "deploy/grafana/provisioning/dashboards/modelcycle.yml")[0]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./grafana/dashboards"] == provider["providers"][0]["options"]["path"]
