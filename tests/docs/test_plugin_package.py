"""The example task as users ship one: a package of its own, installed beside modelcycle.

`docs/examples/blobs_plugin` is built and installed with pip (into a folder of its own, put
on PYTHONPATH), and `modelcycle` finds its task, its config groups and its serving adapter
through their entry points alone: it lists the task, runs its experiment end to end, and
serves the champion where torch cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from example_task import PLUGIN
from modelcycle.registry import Registry
from modelcycle.tracking import TrackingSettings, tracking_uri
from server_process import drift_without_torch


@dataclass(frozen=True)
class Installed:
    """The example plugin installed into `site`, and a workspace to run it in."""

    site: Path
    workspace: Path

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.site), "MODELCYCLE_HOME": str(self.workspace)}

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`modelcycle ARGS` with the plugin installed; output as text."""
        return subprocess.run(
            [sys.executable, "-m", "modelcycle", *args],
            capture_output=True,
            text=True,
            env={**os.environ, **self.env()},
            cwd=self.workspace.parent,
            timeout=600,
            check=False,
        )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("plugin")
    source = root / "source"  # a copy: building writes build/ and *.egg-info beside it
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    done = subprocess.run(
        [*pip, "--no-build-isolation", "--target", str(root / "site"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield Installed(root / "site", root / "workspace")


@pytest.mark.slow  # pip builds the package, then a pipeline and a server run in processes
def test_an_installed_package_brings_its_task_configs_and_adapter(installed: Installed) -> None:
    listed = installed.run("tasks")
    assert listed.returncode == 0, listed.stderr
    expected = ["blobs", "experiment=blobs", "(from", "blobs-plugin", "0.1.0)"]
    assert any(line.split() == expected for line in listed.stdout.splitlines()), listed.stdout

    # its task config: its own settings, and none of the default data and model groups
    shown = installed.run("config", "task=blobs", "--check")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "lr: 0.5" in shown.stdout and "every value checks out" in shown.stdout
    bad = installed.run("config", "task=blobs", "task.lr=0", "--check")
    assert bad.returncode == 2 and "lr=0" in bad.stdout, bad.stdout + bad.stderr

    ran = installed.run("pipeline", "blobs", "trainer.progress_bar=false")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    registry = Registry(tracking_uri(TrackingSettings(), installed.workspace))
    version = registry.resolve("blobs@champion")
    assert version.version == "1" and version.tags["export.parity.passed"] == "True"
    lineage = json.loads(version.tags["lineage.packages"])
    assert lineage["blobs-plugin"] == "0.1.0"  # the task's own code, beside modelcycle's
    config = yaml.safe_load(version.tags["lineage.config"])  # the run's resolved config
    assert config["task"] == {"name": "blobs", "rows": 240, "lr": 0.5}
    assert "data" not in config and "model" not in config  # groups the task does not take

    summary = drift_without_torch(
        installed.workspace, "blobs", installed.workspace.parent / "server.log", installed.env()
    )
    assert summary["model"] == "blobs"


@pytest.mark.slow
def test_task_name_alone_is_refused_naming_the_task_config(installed: Installed) -> None:
    # it used to run the plugin with the twins task's settings, data and model
    done = installed.run("train", "task.name=blobs")
    assert done.returncode == 2
    said = " ".join(done.stdout.split())
    assert "task.name=blobs: this renames the task" in said and "task=blobs" in said
