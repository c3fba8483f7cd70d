"""Stand-ins on disk are recorded: never taken for real data, never reused with other settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.utils import instantiate
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.config import compose_config
from modelcycle.data.rice import RiceSource
from modelcycle.data.standin import MANIFEST, standin_root
from modelcycle.data.tables import DataError
from modelcycle.data.wikics import RAW, WikiCSSource

runner = CliRunner()


def test_a_stand_in_is_written_once_recorded_and_checked(tmp_path: Path) -> None:
    writes: list[int] = []

    def write() -> None:
        writes.append(1)
        (tmp_path / "drawn.txt").write_text("drawn")

    spec = {"seed": 42, "synthetic_nodes": 100}
    assert standin_root(tmp_path, "toy", spec, False, False, write) is None  # real data wanted
    assert standin_root(tmp_path, "toy", spec, True, False, write) == tmp_path
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"dataset": "toy", **spec}
    assert standin_root(tmp_path, "toy", spec, True, True, write) == tmp_path
    assert len(writes) == 1  # the second run read what the first wrote

    with pytest.raises(DataError, match=r"holds the offline toy stand-in.*data.synthetic=true"):
        standin_root(tmp_path, "toy", spec, False, True, write)
    with pytest.raises(
        DataError,
        match=r"drawn with data.seed=42; this run asks for data.seed=7\. Give data.seed=42",
    ):
        standin_root(tmp_path, "toy", {**spec, "seed": 7}, True, True, write)
    assert len(writes) == 1 and (tmp_path / "drawn.txt").read_text() == "drawn"  # nothing lost


def test_files_without_a_record_are_not_overwritten_by_a_stand_in(tmp_path: Path) -> None:
    (tmp_path / "real.txt").write_text("real")
    with pytest.raises(DataError, match=r"no record of a stand-in.*data.download_dir"):
        standin_root(tmp_path, "toy", {"seed": 1}, True, True, lambda: None)
    assert (tmp_path / "real.txt").read_text() == "real" and not (tmp_path / MANIFEST).exists()


def test_a_run_without_synthetic_refuses_the_image_and_graph_stand_ins(tmp_path: Path) -> None:
    rice = RiceSource(download_dir=tmp_path / "rice", synthetic=True, per_class_synthetic=2)
    assert rice.resolve_root() == tmp_path / "rice"
    with pytest.raises(DataError, match=r"offline rice stand-in"):
        RiceSource(download_dir=tmp_path / "rice").load()
    with pytest.raises(DataError, match=r"data.per_class_synthetic=2; this run asks for .*=3"):
        RiceSource(download_dir=tmp_path / "rice", synthetic=True, per_class_synthetic=3).load()

    WikiCSSource(download_dir=tmp_path / "wikics", synthetic=True, synthetic_nodes=60).load()
    with pytest.raises(DataError, match=r"offline wikics stand-in"):
        WikiCSSource(download_dir=tmp_path / "wikics").load()


def test_a_stand_in_is_never_read_as_data_root(tmp_path: Path) -> None:
    rice = RiceSource(download_dir=tmp_path / "rice", synthetic=True, per_class_synthetic=2)
    rice.load()
    with pytest.raises(DataError, match=r"data.root=.*rice holds the offline rice stand-in"):
        RiceSource(root=tmp_path / "rice").load()
    WikiCSSource(download_dir=tmp_path / "wikics", synthetic=True, synthetic_nodes=60).load()
    with pytest.raises(DataError, match=r"data.root=.*wikics holds the offline wikics stand-in"):
        WikiCSSource(root=tmp_path / "wikics").load()
    # data.synthetic=true reads and writes data.download_dir only: beside data.root, refused
    for source in (
        RiceSource(root=tmp_path / "rice", synthetic=True, per_class_synthetic=2),
        WikiCSSource(root=tmp_path / "wikics", synthetic=True, synthetic_nodes=60),
    ):
        with pytest.raises(DataError, match=r"data.synthetic=true and data.root=.* both set"):
            source.load()


def test_data_fetch_writes_the_stand_in_the_pipeline_draws(tmp_path: Path, workspace: Path) -> None:
    # `data fetch --synthetic` and `pipeline ... data.synthetic=true` read the same data group
    result = runner.invoke(app, ["data", "fetch", "wikics", "--synthetic", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / RAW).is_file()
    data = compose_config(["experiment=node_wikics", "data.synthetic=true"]).data
    source = instantiate(data, download_dir=tmp_path)
    assert source.resolve_root() == tmp_path  # the same settings: no refusal
    assert json.loads((tmp_path / MANIFEST).read_text())["seed"] == data.seed == 42
