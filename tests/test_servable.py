"""A saved model folder is the earlier one or the new one whole, never a part of one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modelcycle.servable import MANIFEST, REFERENCE, ServableModel

real_savez = np.savez


def servable(info: str, reference: bool = True) -> ServableModel:
    """A one-layer model with held-out and (optionally) reference rows."""
    rows = np.arange(8, dtype=np.float32).reshape(4, 2)
    return ServableModel(
        "t",
        torch.nn.Linear(2, 1),
        ["x"],
        ["y"],
        [rows],
        info={"saved": info},
        target=np.array([0, 1, 0, 1]),
        reference=[rows + 1] if reference else None,
    )


def stopped_at_reference(file: Any, *args: Any, **kwargs: Any) -> None:
    """np.savez that writes the reference sample halfway, then stops."""
    if Path(file).name != REFERENCE:
        return real_savez(file, *args, **kwargs)
    Path(file).write_bytes(b"PK\x03\x04 half")
    raise KeyboardInterrupt


def test_a_save_writes_the_model_its_arrays_and_manifest_and_nothing_else(
    tmp_path: Path,
) -> None:
    manifest = servable("first").save(tmp_path / "model")
    assert manifest == tmp_path / "model" / MANIFEST
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == sorted(["model.pt", "held_out.npz", REFERENCE, MANIFEST])
    assert sorted(json.loads(manifest.read_text())["files"]) == sorted(set(names) - {MANIFEST})
    loaded = ServableModel.load(tmp_path / "model")
    assert loaded.info == {"saved": "first"}
    assert loaded.reference is not None and loaded.reference[0][0, 0] == 1.0


def test_a_save_stopped_halfway_leaves_no_folder_and_nothing_beside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(np, "savez", stopped_at_reference)
    with pytest.raises(KeyboardInterrupt):
        servable("stopped").save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_a_save_stopped_halfway_leaves_the_earlier_folder_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    servable("first").save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}
    monkeypatch.setattr(np, "savez", stopped_at_reference)
    with pytest.raises(KeyboardInterrupt):
        servable("second").save(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == before
    assert ServableModel.load(tmp_path / "model").info == {"saved": "first"}


def test_a_save_over_an_earlier_folder_replaces_it_whole(tmp_path: Path) -> None:
    servable("first").save(tmp_path / "model")
    servable("second", reference=False).save(tmp_path / "model")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == sorted(["model.pt", "held_out.npz", MANIFEST])  # no earlier reference
    loaded = ServableModel.load(tmp_path / "model")
    assert loaded.info == {"saved": "second"} and loaded.reference is None
