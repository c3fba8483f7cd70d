"""Wiki-CS: the stand-in in the real file format, read by PyG's own class; download errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.data.tables import DataError
from modelcycle.data.wikics import CLASSES, RAW, WikiCSSource, write_wikics_standin

runner = CliRunner()


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_wikics_standin(tmp_path_factory.mktemp("wikics"), nodes=400, seed=0)


def test_the_standin_has_the_real_keys_and_split_proportions(standin: Path) -> None:
    raw = json.loads((standin / RAW).read_text())
    keys = {"features", "labels", "links", "train_masks", "stopping_masks", "val_masks"}
    assert set(raw) == keys | {"test_mask"}
    assert len(raw["features"]) == 400 and len(raw["features"][0]) == 300
    for key in ("train_masks", "stopping_masks", "val_masks"):
        assert len(raw[key]) == 20 and all(isinstance(v, bool) for v in raw[key][0])
    shares = [np.mean(raw[k][0]) for k in ("train_masks", "stopping_masks", "val_masks")]
    assert shares == pytest.approx([0.05, 0.30, 0.15], abs=0.01)
    assert np.mean(raw["test_mask"]) == 0.5
    for k in range(20):  # the three parts of a split and the test half never overlap
        parts = np.array([raw[m][k] for m in ("train_masks", "stopping_masks", "val_masks")])
        assert (parts.sum(0) + np.array(raw["test_mask"]) == 1).all()


def test_pyg_reads_it_into_an_undirected_graph_with_the_official_splits(standin: Path) -> None:
    graph = WikiCSSource(root=standin).load()
    assert graph.features.shape == (400, 300) and graph.classes == list(CLASSES)
    assert graph.train_masks.shape == graph.stopping_masks.shape == (20, 400)
    raw = json.loads((standin / RAW).read_text())
    for i, around in enumerate(graph.neighbors[:50]):
        assert i not in around
        expected = {j for j in raw["links"][i] if j != i}
        expected |= {j for j, links in enumerate(raw["links"]) if i in links and j != i}
        assert set(around.tolist()) == expected  # links are read both ways
    assert graph.data_hash and "20 official splits" in graph.notes[0]


def test_a_changed_file_is_read_again_not_pyg_s_processed_copy(tmp_path: Path) -> None:
    root = write_wikics_standin(tmp_path, nodes=100, seed=0)
    before = WikiCSSource(root=root).load()
    raw = json.loads((root / RAW).read_text())
    raw["labels"] = [(label + 1) % 10 for label in raw["labels"]]
    (root / RAW).write_text(json.dumps(raw))
    after = WikiCSSource(root=root).load()
    assert after.data_hash != before.data_hash
    assert np.array_equal(after.labels, (before.labels + 1) % 10)


@pytest.mark.parametrize("bad", [60, -1])
def test_a_link_to_no_article_is_refused_naming_the_article(tmp_path: Path, bad: int) -> None:
    root = write_wikics_standin(tmp_path, nodes=60, seed=0)
    raw = json.loads((root / RAW).read_text())
    raw["links"][7].append(bad)
    (root / RAW).write_text(json.dumps(raw))
    with pytest.raises(DataError, match=rf"data.json: article 7 links to {bad}, which is no art"):
        WikiCSSource(root=root).load()


def test_a_root_without_the_file_says_which_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds no raw/data.json"):
        WikiCSSource(root=tmp_path).load()


def test_data_fetch_wikics_synthetic_writes_the_real_file(tmp_path: Path, workspace: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "wikics", "--synthetic", "--dest", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / RAW).is_file() and "stand-in" in result.output


def test_data_fetch_wikics_offline_is_one_clear_line(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch_geometric.datasets.wikics as pyg_wikics

    asked: list[str] = []

    def offline(url: str, folder: str, *args: Any, **kwargs: Any) -> str:
        asked.append(url)
        raise OSError("Name or service not known")

    monkeypatch.setattr(pyg_wikics, "download_url", offline)
    result = runner.invoke(app, ["data", "fetch", "wikics"])
    assert asked and asked[0].startswith("https://github.com/pmernyei/wiki-cs-dataset")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Could not download Wiki-CS" in result.output and "--synthetic" in result.output
