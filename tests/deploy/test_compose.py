"""The compose stack: every service, build and mounted file is there and wired together."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
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


def _runtime_stage(dockerfile: Path) -> str:
    return re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[-1]


def _owned(stage: str, user: str) -> set[str]:
    """Directories the stage creates (`mkdir`) and gives to `user` (`chown [-R] user`)."""
    made = set()
    for parents, paths in re.findall(r"mkdir( -p)? ([^&\n]+)", stage):
        for path in paths.split():
            ancestors = PurePosixPath(path).parents if parents else []
            made |= {path, *(str(a) for a in ancestors if str(a) != "/")}
    given = [
        (bool(recursive), path)
        for recursive, paths in re.findall(rf"chown( -R)? {user} ([^&\n]+)", stage)
        for path in paths.split()
    ]
    return {m for m in made if any(m == p or (r and m.startswith(p + "/")) for r, p in given)}


def test_named_volumes_mount_where_the_image_has_a_directory_its_user_owns(
    compose: dict[str, Any],
) -> None:
    """A new named volume takes the owner of the image's directory it is mounted on, and is
    root's where the image has none: a non-root service could not write to it."""
    images = {
        s["image"]: REPO / "deploy" / s["build"]["context"] / s["build"]["dockerfile"]
        for s in compose["services"].values()
        if "build" in s
    }
    checked = 0
    for name, service in compose["services"].items():
        if service.get("image") not in images:
            continue
        stage = _runtime_stage(images[service["image"]])
        user = re.findall(r"^USER (\S+)", stage, flags=re.M)[-1]
        names = dict(re.findall(r"useradd .*--uid (\d+) (\S+)", stage))  # USER may be a uid
        user = names.get(user, user)
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source in compose.get("volumes", {}):
                assert target in _owned(stage, user), f"{name}: {target} is not {user}'s"
                checked += 1
    assert checked >= 2  # mlflow's and train's


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
