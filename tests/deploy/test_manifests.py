"""Kubernetes, Cloud Run, Cloud Build and compose files: valid, and consistent with the app."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from modelcycle.serving.app import ServeSettings, create_app

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"


def documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document in a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    """Validate manifests strictly against the Kubernetes schemas (kubernetes-validate)."""
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    assert exe, "kubernetes-validate not found: installed by `pip install -e '.[dev]'`"
    command = [exe, "--strict", "-k", KUBERNETES_VERSION, *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def by_kind(kind: str) -> dict[str, Any]:
    found = [d for p in sorted(K8S.glob("*.yaml")) for d in documents(p) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    manifests = [p for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = kubernetes_validate(*manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = {d["kind"] for p in manifests for d in documents(p)}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap"} <= kinds


def test_the_validator_rejects_a_misspelt_field(tmp_path: Path) -> None:
    deployment = by_kind("Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    result = kubernetes_validate(broken)
    assert result.returncode != 0
    assert "replica" in result.stdout + result.stderr


def test_kustomization_lists_every_manifest() -> None:
    listed = set(documents(K8S / "kustomization.yaml")[0]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def app_paths() -> set[str]:
    return {getattr(route, "path", "") for route in create_app(list, ServeSettings()).routes}


def test_probes_use_the_servers_health_routes() -> None:
    container = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz", "/metrics"} <= app_paths()
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["ports"][0]["containerPort"] == 8000


def test_a_rollout_drains_before_the_server_stops_within_the_grace_period() -> None:
    # At SIGTERM the server accepts no new connection; without a preStop pause, traffic
    # routed to the pod before its endpoint is removed met refused connections.
    from modelcycle.serving.server import GRACEFUL_SECONDS

    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5
    assert int(command[1]) + GRACEFUL_SECONDS < pod["terminationGracePeriodSeconds"]


def test_the_configmap_names_models_the_way_serve_takes_them() -> None:
    deployment = by_kind("Deployment")
    config = by_kind("ConfigMap")
    refs = config["data"]["MODELCYCLE_MODELS"].split()
    assert refs and all(r.count("@") == 1 and all(r.split("@")) for r in refs)
    env_from = deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    entry = (REPO / "deploy" / "api-entrypoint.sh").read_text()
    assert all(f"${{{key}" in entry for key in config["data"]), "the entry script reads them all"


def test_hpa_scales_the_deployment() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        by_kind("Deployment")["metadata"]["name"],
    )
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_cloud_run_service_uses_the_same_probes_and_port() -> None:
    service = documents(REPO / "deploy" / "cloudrun" / "service.yaml")[0]
    container = service["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 8000
    assert container["startupProbe"]["httpGet"]["path"] in app_paths()
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_cloud_build_builds_and_pushes_both_images() -> None:
    build = documents(REPO / "cloudbuild.yaml")[0]
    files = {
        a.split("=", 1)[1] for s in build["steps"] for a in s["args"] if a.startswith("--file=")
    }
    assert files == {"deploy/api.dockerfile", "deploy/train.dockerfile"}
    assert all((REPO / f).is_file() for f in files)
    tags = {a.split("=", 1)[1] for s in build["steps"] for a in s["args"] if a.startswith("--tag=")}
    assert tags == set(build["images"])
