"""Shared fixtures: the real QTIM files when present, and a tiny QTIM-shaped BIDS root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from qtim_fixtures import write_tiny_qtim

# As the command does (modelcycle.cli), before any test module loads torch: idle OpenMP
# threads sleep instead of spinning, which made training several times slower under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = ["serving_fixtures"]  # the registered, exported model for serving tests

REPO = Path(__file__).resolve().parents[1]
# Absolute: `make` exports QTIM_ROOT relative to the checkout, and tests run elsewhere too.
REAL_QTIM = Path(os.environ.get("QTIM_ROOT") or REPO.parent / "shared" / "data" / "qtim").resolve()


@pytest.fixture(scope="session")
def real_qtim() -> Path:
    """The real QTIM files (CC0); tests using them skip, saying why, when they are absent."""
    if not (REAL_QTIM / "participants.tsv").is_file():
        pytest.skip(f"real QTIM files not found at {REAL_QTIM} (set QTIM_ROOT to a copy)")
    return REAL_QTIM


@pytest.fixture
def tiny_qtim(tmp_path: Path) -> Path:
    """A tiny QTIM-shaped BIDS root (24 families, 48 subjects)."""
    return write_tiny_qtim(tmp_path / "qtim")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace, also set as MODELCYCLE_HOME."""
    ws = tmp_path / "ws"
    monkeypatch.setenv("MODELCYCLE_HOME", str(ws))
    return ws


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Test tensors are tiny: extra intra-op threads only contend with the other core."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
