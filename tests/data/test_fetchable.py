"""`data fetch NAME` for a data group an installed package adds, as for the built-in ones."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from example_task import config_entry_points
from modelcycle.cli import app

runner = CliRunner()

SOURCES = """
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ToySource:
    root: Path | None = None
    download_dir: Path = Path("toy")
    synthetic: bool = False
    rows: int = 3

    def resolve_root(self) -> Path:
        target = Path(self.download_dir)
        target.mkdir(parents=True, exist_ok=True)
        kind = "stand-in" if self.synthetic else "downloaded"
        (target / "rows.csv").write_text(f"{kind} {self.rows}\\n")
        return target


@dataclass
class RealOnly:
    root: Path | None = None
    download_dir: Path = Path("real")

    def resolve_root(self) -> Path:
        Path(self.download_dir).mkdir(parents=True)
        return Path(self.download_dir)


@dataclass
class LocalOnly:
    root: Path | None = None

    def resolve_root(self) -> Path:
        return Path(self.root)
"""

CONFIGS = {
    "toy": "_target_: toy_data.sources.ToySource\nroot: null\n"
    "download_dir: ${workspace}/data/toy\nsynthetic: false\nrows: 5\n",
    "real": "_target_: toy_data.sources.RealOnly\nroot: null\ndownload_dir: ${workspace}/r\n",
    "local": "_target_: toy_data.sources.LocalOnly\nroot: null\n",
    "broken": "_target_: toy_data.gone.Source\nroot: null\n",
}


@pytest.fixture
def toy_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package `toy_data` whose `conf/data/` adds four data groups."""
    package = tmp_path / "site" / "toy_data"
    (package / "conf" / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "conf" / "__init__.py").write_text("")
    (package / "sources.py").write_text(textwrap.dedent(SOURCES))
    for name, text in CONFIGS.items():
        (package / "conf" / "data" / f"{name}.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    config_entry_points(monkeypatch, "toy_data.conf")


def _said(result: object) -> str:
    return " ".join(result.output.replace("│", " ").split())  # type: ignore[attr-defined]


@pytest.mark.parametrize(("options", "kind"), [([], "downloaded"), (["--synthetic"], "stand-in")])
def test_a_package_data_group_is_fetched_with_its_config(
    options: list[str], kind: str, toy_data: None, tmp_path: Path, workspace: Path
) -> None:
    # It was "Unknown dataset 'toy'": only the built-in names could be fetched.
    dest = tmp_path / "dest"
    result = runner.invoke(app, ["data", "fetch", "toy", "--dest", str(dest), *options])
    assert result.exit_code == 0, result.output
    assert (dest / "rows.csv").read_text() == f"{kind} 5\n"  # the group's own rows=5
    assert f"toy {'stand-in' if options else 'data'} in {dest}" in _said(result)
    default = runner.invoke(app, ["data", "fetch", "toy"])
    assert default.exit_code == 0, default.output
    assert (workspace / "data" / "toy" / "rows.csv").is_file()  # its download_dir
    # workspace= as every other command takes it ("unexpected extra argument" before)
    other = tmp_path / "other-ws"
    given = runner.invoke(app, ["data", "fetch", "toy", *options, f"workspace={other}"])
    assert given.exit_code == 0, given.output
    assert (other / "data" / "toy" / "rows.csv").read_text() == f"{kind} 5\n"


def test_what_a_package_source_cannot_fetch_is_said(toy_data: None, workspace: Path) -> None:
    synthetic = runner.invoke(app, ["data", "fetch", "real", "--synthetic"], terminal_width=200)
    assert synthetic.exit_code == 2
    assert "--synthetic: not an option of real, which takes --dest." in _said(synthetic)
    unknown = _said(runner.invoke(app, ["data", "fetch", "nope"], terminal_width=300))
    assert "Unknown dataset 'nope'; available: qtim" in unknown
    names = unknown.partition("available: ")[2]
    assert "toy" in names and "real" in names and "rice" in names and "wikics" in names
    assert "local" not in names and "broken" not in names and "qtim_func" not in names
    local = _said(runner.invoke(app, ["data", "fetch", "local"], terminal_width=300))
    assert "data group local is read from data.root only" in local
    own = _said(runner.invoke(app, ["data", "fetch", "qtim_func"], terminal_width=300))
    assert "data group qtim_func is fetched as qtim (--modality func) or qtim-synthetic" in own
    assert not workspace.exists()  # nothing was written for any of them


def test_a_package_source_that_does_not_import_is_named(toy_data: None) -> None:
    result = runner.invoke(app, ["data", "fetch", "broken"], terminal_width=300)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "data group broken: its source toy_data.gone.Source does not import" in _said(result)
