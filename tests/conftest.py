"""Shared fixtures: the real QTIM files when present, and a tiny QTIM-shaped BIDS root."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_QTIM = Path(os.environ.get("QTIM_ROOT") or REPO.parent / "shared" / "data" / "qtim")

REGIONAL = [
    f"{h}_{r}_{k}"
    for h in "LR"
    for r in ("precuneus", "insula", "cuneus", "fusiform")
    for k in ("surfarea", "thickavg", "gmvol")
] + ["Lhippo", "Rhippo", "Left_VentralDC", "Right_VentralDC"]
GLOBAL = ["EstimatedTotalIntraCranialVol", "CSF"]


@pytest.fixture(scope="session")
def real_qtim() -> Path:
    """The real QTIM files (CC0); tests using them skip, saying why, when they are absent."""
    if not (REAL_QTIM / "participants.tsv").is_file():
        pytest.skip(f"real QTIM files not found at {REAL_QTIM} (set QTIM_ROOT to a copy)")
    return REAL_QTIM


def write_tiny_qtim(root: Path, n_families: int = 24, seed: int = 0) -> Path:
    """Write participants.tsv and a FreeSurfer ses-01 table where relatives look alike.

    Families cycle through: twins (same age), twins + an older sibling, a singleton,
    opposite-sex twins. Each subject's measures = family signal + individual noise.
    """
    rng = np.random.default_rng(seed)
    rows, measures = [], []
    columns = REGIONAL + GLOBAL
    sid = 0
    for f in range(n_families):
        kind = f % 4
        ages = {0: [25, 25], 1: [25, 25, 29], 2: [30], 3: [22, 22]}[kind]
        sexes = {0: "MM", 1: "FFM", 2: "F", 3: "MF"}[kind]
        family = rng.normal(size=len(columns))
        for age, sex in zip(ages, sexes, strict=True):
            sid += 1
            pid = f"sub-{sid:04d}"
            rows.append((pid, f"fam-{f:04d}", sex, age, "n/a", "right", 1 + sid % 2))
            values = 1000 + 100 * (family + 0.5 * rng.normal(size=len(columns)))
            measures.append([pid, *np.round(values, 2)])
    participants = pd.DataFrame(
        rows,
        columns=[
            "participant_id",
            "family_id",
            "sex",
            "age",
            "age_ses02",
            "handedness",
            "ses01_T1w_acq",
        ],
    )
    fs = pd.DataFrame(measures, columns=["participant_id", *columns])
    (root / "derivatives" / "freesurfer_5.3").mkdir(parents=True, exist_ok=True)
    participants.to_csv(root / "participants.tsv", sep="\t", index=False)
    fs.to_csv(root / "derivatives/freesurfer_5.3/fs5.3_ses-01.tsv", sep="\t", index=False)
    return root


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
