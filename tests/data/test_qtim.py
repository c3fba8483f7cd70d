from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelcycle.data.qtim import FREESURFER_SES01, PARTICIPANTS, QTIMSource, read_participants
from modelcycle.data.tables import DataError


def _edit(root: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = root / name
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    change(table).to_csv(path, sep="\t", index=False)


def test_tiny_cohort_loads_with_covariates(tiny_qtim: Path) -> None:
    cohort = QTIMSource(root=tiny_qtim).load()
    assert len(cohort) == 48 and cohort.measures.shape[1] == 30
    assert list(cohort.subjects.index) == list(cohort.measures.index)
    C = cohort.covariates()
    assert C.shape == (48, 3) and set(np.unique(C[:, 1])) == {0.0, 1.0}
    assert len(cohort.data_hash) == 64


def test_data_hash_follows_content(tiny_qtim: Path) -> None:
    before = QTIMSource(root=tiny_qtim).load().data_hash
    _edit(tiny_qtim, FREESURFER_SES01, lambda t: t.assign(CSF="1234.5"))
    assert QTIMSource(root=tiny_qtim).load().data_hash != before


def test_missing_family_id_names_file_and_column(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, PARTICIPANTS, lambda t: t.drop(columns="family_id"))
    with pytest.raises(DataError, match=r"participants\.tsv.*'family_id' is missing"):
        QTIMSource(root=tiny_qtim).load()


def test_renamed_column_suggests_the_rename(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, PARTICIPANTS, lambda t: t.rename(columns={"family_id": "family"}))
    with pytest.raises(DataError, match="found 'family': rename it to 'family_id'"):
        QTIMSource(root=tiny_qtim).load()


def test_duplicate_participant_ids_are_named(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, PARTICIPANTS, lambda t: pd.concat([t, t.iloc[[3]]]))
    with pytest.raises(DataError, match=r"repeated value.*sub-0004"):
        QTIMSource(root=tiny_qtim).load()


def test_empty_table_is_an_error(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, FREESURFER_SES01, lambda t: t.iloc[:0])
    with pytest.raises(DataError, match=r"fs5\.3_ses-01\.tsv: the table has a header but no rows"):
        QTIMSource(root=tiny_qtim).load()


def test_bad_sex_value_names_rows(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, PARTICIPANTS, lambda t: t.assign(sex=t["sex"].where(t.index != 2, "X")))
    with pytest.raises(DataError, match=r"'sex' must be M or F.*sub-0003='X'"):
        read_participants(tiny_qtim / PARTICIPANTS)


def test_non_numeric_measure_names_column(tiny_qtim: Path) -> None:
    _edit(tiny_qtim, FREESURFER_SES01, lambda t: t.assign(CSF=t["CSF"].where(t.index != 0, "abc")))
    with pytest.raises(DataError, match="'CSF' holds non-numeric values"):
        QTIMSource(root=tiny_qtim).load()


def test_unknown_subjects_and_gaps_are_counted_exclusions(tiny_qtim: Path) -> None:
    def change(t: pd.DataFrame) -> pd.DataFrame:
        extra = t.iloc[[0]].assign(participant_id="sub-9999")
        t.loc[1, t.columns[1:25]] = "n/a"  # most measures missing → subject excluded
        t.loc[2, "CSF"] = "n/a"  # one gap → kept, imputed per fold
        t["Lhippo"] = "n/a"  # missing for everyone → measure dropped
        return pd.concat([t, extra])

    _edit(tiny_qtim, FREESURFER_SES01, change)
    cohort = QTIMSource(root=tiny_qtim).load()
    reasons = {k: v for k, v in cohort.exclusions.items()}
    assert reasons["FreeSurfer row without a participants.tsv entry"] == ["sub-9999"]
    assert reasons["subject missing >20% of measures"] == ["sub-0002"]
    assert reasons["measure missing in >50% of subjects"] == ["Lhippo"]
    assert "sub-0003" in cohort.measures.index
    assert cohort.measures["CSF"].isna().loc["sub-0003"]
    assert len(cohort) == 47


def test_exclusions_that_leave_nothing_are_counted_not_listed(tiny_qtim: Path) -> None:
    def gaps(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[2, t.columns[1:]] = "n/a"  # one subject without measures: none is complete
        return t

    _edit(tiny_qtim, FREESURFER_SES01, gaps)
    with pytest.raises(DataError, match=r"nothing is left after the exclusions \(") as err:
        QTIMSource(root=tiny_qtim, max_missing_measure=0).load()
    assert "measure missing in >0% of subjects: " in str(err.value)
    assert "'CSF'" not in str(err.value)  # counts, not hundreds of names
    assert "data.max_missing_measure" in str(err.value)


def test_missing_root_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root=.*leave it empty to download"):
        QTIMSource(root=tmp_path / "nowhere").load()


def test_missing_freesurfer_table_names_the_file(tiny_qtim: Path) -> None:
    (tiny_qtim / FREESURFER_SES01).unlink()
    with pytest.raises(DataError, match=r"fs5\.3_ses-01\.tsv: file not found"):
        QTIMSource(root=tiny_qtim).load()


def test_real_cohort_rules_and_counts(real_qtim: Path) -> None:
    cohort = QTIMSource(root=real_qtim).load()
    assert len(cohort) == 1076 and cohort.measures.shape[1] == 271
    dropped = cohort.exclusions["measure missing in >50% of subjects"]
    assert sorted(dropped) == ["AvgThickness", "TSurfArea"]
    assert len(cohort.exclusions["subject missing >20% of measures"]) == 59
    assert cohort.subjects["family_id"].nunique() < len(cohort)
