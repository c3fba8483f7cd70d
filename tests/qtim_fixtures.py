"""A tiny QTIM-shaped BIDS root where relatives look alike, for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

REGIONAL = [
    f"{h}_{r}_{k}"
    for h in "LR"
    for r in ("precuneus", "insula", "cuneus", "fusiform")
    for k in ("surfarea", "thickavg", "gmvol")
] + ["Lhippo", "Rhippo", "Left_VentralDC", "Right_VentralDC"]
GLOBAL = ["EstimatedTotalIntraCranialVol", "CSF"]


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
    (root / "dataset_description.json").write_text('{"Name": "tiny QTIM", "BIDSVersion": "1.8.0"}')
    (root / "participants.json").write_text('{"family_id": {"Description": "family"}}')
    return root
