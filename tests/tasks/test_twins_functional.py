"""Twins from resting-state fMRI on a tiny synthetic cohort: data, leakage, training, export."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import openneuro
import pandas as pd
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from modelcycle.cli import app
from modelcycle.data.connectomes import Failure, MaskerSettings, Prepared
from modelcycle.data.parcellations import Parcellation
from modelcycle.data.qtim_functional import (
    FUNCTIONAL_FILES,
    FunctionalSource,
    fetch_functional,
    prepare_dataset,
)
from modelcycle.data.relations import Relation
from modelcycle.export import export_model
from modelcycle.models.connectome_gnn import ConnectomeGraphEncoder
from modelcycle.pipeline import PipelineSettings, run_pipeline
from modelcycle.servable import ServableModel
from modelcycle.serving.adapter import RequestError
from modelcycle.tasks import get_task
from modelcycle.tasks.twins_functional import (
    FunctionalData,
    TwinsFunctionalTask,
    parcels_of,
    retest_identification,
)
from modelcycle.tasks.twins_functional_serving import ConnectomePairRequest, FunctionalServing
from modelcycle.tracking import Tracker, TrackingSettings
from modelcycle.training import TrainerSettings

runner = CliRunner()
TINY_DATA = [
    "data.families=12",
    "data.n_volumes=40",
    "data.n_parcels=12",
    "data.masker.min_volumes=30",
    "data.n_jobs=1",
    "data.progress=false",
]


def _source(root: Path, qtim: Path) -> FunctionalSource:
    return FunctionalSource(
        synthetic_dir=root / "bids",
        qtim_root=qtim,
        families=12,
        n_volumes=40,
        n_parcels=12,
        seed=1,
        masker=MaskerSettings(min_volumes=30),
        cache_dir=root / "cache",
        n_jobs=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def tiny(
    real_qtim: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TwinsFunctionalTask, FunctionalData]:
    root = tmp_path_factory.mktemp("func")
    source = _source(root, real_qtim)
    task = TwinsFunctionalTask(source, ConnectomeGraphEncoder, batch_size=64)
    data, _ = task.load()
    return task, data


def test_the_task_is_registered_by_name() -> None:
    assert get_task("twins_functional") is TwinsFunctionalTask


def test_load_gives_connectome_edges_and_hidden_kinship(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    _, data = tiny
    assert data.X.shape == (len(data.families), 12 * 11 // 2)
    assert data.parcels == [f"parcel{i:03d}" for i in range(1, 13)]
    assert parcels_of(["b~a", "b~c", "a~c"]) == ["b", "a", "c"]  # atlas order, not sorted
    twin_like = data.relations == Relation.TWIN
    hidden = data.hidden["MZ"] | data.hidden["DZ"]
    assert hidden.any() and not (hidden & ~twin_like).any()  # hidden ones are twin-like
    assert not (data.hidden["MZ"] & data.hidden["DZ"]).any()
    assert np.array_equal(hidden, hidden.T)


def test_each_excluded_subject_is_counted_once_under_its_own_reason(
    real_qtim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Skipped runs were also counted as "no resting-state run", two runs skipped for the same
    # reason were one, and a run without a participants.tsv row was dropped unsaid.
    shutil.copy(real_qtim / "participants.tsv", tmp_path / "participants.tsv")
    ids = list(pd.read_csv(tmp_path / "participants.tsv", sep="\t")["participant_id"])
    kept, (short_a, short_b) = ids[:6], ids[6:8]
    names = ("p1", "p2", "p3")
    rng = np.random.default_rng(0)
    prepared = Prepared(
        [*kept, "sub-9999"],
        [rng.normal(size=(40, 3)).astype(np.float32) for _ in range(7)],
        [f"key{i}" for i in range(7)],
        [Failure(s, f"{s}_bold.nii.gz", "12 volumes, fewer than 30") for s in (short_a, short_b)],
    )
    parcellation = Parcellation("slabs", nib.Nifti1Image(np.zeros((2, 2, 2)), np.eye(4)), names)
    source = _source(tmp_path, real_qtim)
    monkeypatch.setattr(source, "prepare", lambda: (tmp_path, prepared, parcellation))
    cohort = source.load()
    assert list(cohort.subjects.index) == kept
    assert cohort.exclusions == {
        "no resting-state run": sorted(set(ids) - {*kept, short_a, short_b}),
        "run skipped: 12 volumes, fewer than 30": [short_a, short_b],
        "rest run without a participants.tsv entry": ["sub-9999"],
    }


def test_a_prepare_that_skips_every_run_leaves_no_earlier_plot(
    real_qtim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # connectomes.npz was rewritten empty while the last mean_connectome.png stayed.
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(40, 3)).astype(np.float32) for _ in range(2)]
    done = Prepared(["sub-01", "sub-02"], series, ["k1", "k2"])
    failed = Prepared([], [], [], [Failure("sub-01", "sub-01_bold.nii.gz", "3-D")])
    parcellation = Parcellation(
        "slabs", nib.Nifti1Image(np.zeros((2, 2, 2)), np.eye(4)), ("p1", "p2", "p3")
    )
    source = _source(tmp_path, real_qtim)
    out = tmp_path / "prepared"
    for prepared in (done, failed):
        monkeypatch.setattr(source, "prepare", lambda p=prepared: (tmp_path, p, parcellation))
        result = prepare_dataset(source, out)
    assert not (out / "mean_connectome.png").exists()
    assert [p.name for p in result.files] == ["connectomes.npz", "failures.tsv"]
    with np.load(out / "connectomes.npz") as saved:
        assert saved["matrices"].size == 0


@pytest.mark.parametrize(
    ("owner", "writer"),
    [(np, "savez"), (pd.DataFrame, "to_csv"), (Figure, "savefig")],
    ids=["connectomes.npz", "failures.tsv", "mean_connectome.png"],
)
def test_a_prepare_stopped_while_writing_leaves_the_last_finished_files_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, owner: object, writer: str
) -> None:
    # The files were written in place: a prepare that failed or was stopped while writing left
    # a truncated connectomes.npz (or a new one beside the old failures.tsv and plot).
    rng = np.random.default_rng(0)
    series = [rng.normal(size=(40, 3)).astype(np.float32) for _ in range(3)]
    earlier = Prepared(["sub-01", "sub-02"], series[:2], ["k1", "k2"])
    later = Prepared(["sub-01", "sub-02", "sub-03"], series, ["k1", "k2", "k3"])
    parcellation = Parcellation(
        "slabs", nib.Nifti1Image(np.zeros((2, 2, 2)), np.eye(4)), ("p1", "p2", "p3")
    )
    source = FunctionalSource(cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "prepared"
    monkeypatch.setattr(source, "prepare", lambda: (tmp_path, earlier, parcellation))
    prepare_dataset(source, out)
    finished = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(finished) == ["connectomes.npz", "failures.tsv", "mean_connectome.png"]

    def half_written(*args: object, **kwargs: object) -> None:
        path = next(a for a in args if isinstance(a, str | os.PathLike))
        Path(path).write_bytes(b"PK\x03\x04 half a fi")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(source, "prepare", lambda: (tmp_path, later, parcellation))
    monkeypatch.setattr(owner, writer, half_written)
    with pytest.raises(OSError, match="No space left on device"):
        prepare_dataset(source, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == finished  # no temporary file
    with np.load(out / "connectomes.npz") as saved:
        assert list(saved["subjects"]) == ["sub-01", "sub-02"]


def test_subjects_with_a_second_rest_session_give_a_same_person_check(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    task, data = tiny
    root = task.functional.resolve_root()
    ids = list(data.cohort.subjects.index)
    both = sorted(
        s
        for s in ids
        if len({p.parent.parent.name for p in (root / s).rglob("*rest_bold.nii.gz")}) > 1
    )
    assert [ids[i] for i in data.retest_rows] == both
    assert data.retest_edges.shape == (len(both), data.X.shape[1])
    if len(both) >= 2:
        assert 0.0 <= task.reference(data)["retest_top1"] <= 1.0
    rng = np.random.default_rng(0)
    people = rng.normal(size=(6, 40))
    rescanned = people + 0.3 * rng.normal(size=people.shape)
    assert retest_identification(people, rescanned) == 1.0
    assert retest_identification(people, rescanned[::-1]) < 0.5


def test_folds_keep_families_apart_and_processing_sees_training_rows_only(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    task, data = tiny
    for fold in task.folds(data, 2, seed=0):
        train, val, test = (set(data.families[p]) for p in (fold.train, fold.val, fold.test))
        assert train.isdisjoint(val) and train.isdisjoint(test) and val.isdisjoint(test)
    fold = task.folds(data, 2, seed=0)[0]
    before = task.processed(data, fold).copy()
    X = data.X.copy()
    X[fold.test] *= 10  # test and validation rows change; nothing fitted may move
    X[fold.val] += 1
    poisoned = FunctionalData(**{**data.__dict__, "X": X})
    task._processed.clear()
    after = task.processed(poisoned, fold)
    assert np.allclose(after[fold.train], before[fold.train])
    task._processed.clear()


def test_baseline_reports_hidden_relations_beside_the_shared_metrics(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    task, data = tiny
    fold = task.folds(data, 2, seed=0)[0]
    evaluation = task.baseline(data, fold)
    assert set(task.summary_metrics) <= set(evaluation.metrics)
    assert {"hidden MZ", "hidden DZ", "unrelated"} <= set(evaluation.details["scores"])
    reference = task.reference(data)
    assert 0.5 < reference["auc_mz_vs_unrelated"] <= 1.0


def test_a_tiny_training_run_reports_saves_and_exports_with_parity(
    tiny: tuple[TwinsFunctionalTask, FunctionalData], tmp_path: Path
) -> None:
    task, _ = tiny
    result = run_pipeline(
        task,
        PipelineSettings("func-tiny", n_folds=2, seed=0),
        TrainerSettings(max_epochs=2, min_epochs=1, patience=2, progress_bar=False),
        Tracker(TrackingSettings(experiment="func"), tmp_path),
        tmp_path,
        {"task": {"name": "twins_functional"}},
    )
    means = result.report.aggregate()
    assert {"model", "baseline"} == set(means)
    assert 0.0 <= means["baseline"]["auc_mz_vs_unrelated"][0] <= 1.0
    assert (result.report_dir / "fold0_similarity.png").stat().st_size > 1000
    served = ServableModel.load(result.report_dir / "model")
    assert served.task == "twins_functional" and served.info["parcels"][0] == "parcel001"
    report = export_model(
        served.module,
        served.example(),
        served.input_names,
        served.output_names,
        tmp_path / "onnx",
        served.held_out,
    )
    assert report.parity.passed and report.parity.max_abs < 1e-4


def test_serving_turns_example_matrices_back_into_the_held_out_rows(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    task, data = tiny
    fold = task.final_fold(data, seed=0)
    model = task.model(data, fold)
    served = task.servable(model, data, fold)
    adapter = FunctionalServing(served.info)
    example = adapter.examples(served.held_out, served.target)[0]
    rows = adapter.decode(ConnectomePairRequest.model_validate(example["request"]))
    assert np.allclose(rows[0][0], served.held_out[0][0], atol=1e-5)
    assert np.allclose(rows[3][0], served.held_out[3][0])
    drift = adapter.drift_features(rows)
    assert drift["age"] == pytest.approx((rows[1][0, 0] + rows[3][0, 0]) / 2)
    assert drift["a_mean_connectivity"] == pytest.approx(float(rows[0].mean()))
    assert drift["b_connectivity_std"] == pytest.approx(float(rows[2].std()))
    bad = json.loads(json.dumps(example["request"]))
    bad["a"]["connectome"] = bad["a"]["connectome"][:-1]
    with pytest.raises(RequestError, match="12×12"):
        adapter.decode(ConnectomePairRequest.model_validate(bad))
    bad = json.loads(json.dumps(example["request"]))
    bad["b"]["connectome"][0][1] += 0.5
    with pytest.raises(RequestError, match="not symmetric"):
        adapter.decode(ConnectomePairRequest.model_validate(bad))
    # a covariance (or Fisher z) matrix was answered as if it were correlations
    assert served.info["kind"] == "correlation"
    bad = json.loads(json.dumps(example["request"]))
    bad["a"]["connectome"][2][5] = bad["a"]["connectome"][5][2] = 3.5
    with pytest.raises(RequestError, match=r"^a\.connectome\[2\]\[5\] = 3\.5 lies outside"):
        adapter.decode(ConnectomePairRequest.model_validate(bad))


def test_cli_writes_the_synthetic_cohort_then_prepares_it_reporting_a_broken_run(
    real_qtim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELCYCLE_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("QTIM_ROOT", str(real_qtim))
    dest = tmp_path / "syn"
    args = ["--families", "4", "--volumes", "40", "--dest", str(dest)]
    done = runner.invoke(app, ["data", "fetch", "qtim-synthetic", *args])
    assert done.exit_code == 0, done.stdout
    bold = sorted(dest.rglob("*task-rest_bold.nii.gz"))
    bold[0].write_bytes(bold[0].read_bytes()[:2000])  # truncated
    overrides = [f"data.synthetic_dir={dest}", *TINY_DATA, "data.families=4"]
    done = runner.invoke(app, ["data", "prepare", *overrides])
    assert done.exit_code == 0, done.stdout
    subject = bold[0].name.split("_")[0]
    assert f"{len(bold) - 1} connectomes" in done.stdout and "1 skipped" in done.stdout
    assert subject in done.stdout and "truncated" in done.stdout
    out = tmp_path / "ws" / "prepared" / "qtim-func"
    assert subject in (out / "failures.tsv").read_text()
    with np.load(out / "connectomes.npz") as saved:
        assert saved["matrices"].shape == (len(bold) - 1, 12, 12)
    assert (out / "mean_connectome.png").stat().st_size > 1000
    again = runner.invoke(app, ["data", "prepare", *overrides])
    assert f"{len(bold) - 1} from cache, 0 computed" in again.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.kind=covariance", "data.kind='covariance': give one of correlation,"),
        ("data.masker.high_pass=0.2", "data.masker.high_pass=0.2: give a frequency below"),
        ("data.masker.detrend=maybe", "data.masker.detrend='maybe': give true or false."),
        ("data.masker.min_volumes=0", "data.masker.min_volumes=0: give a whole number >= 1."),
        # nilearn's fetcher said "'n_rois' must be one of [100, ...]" after the cohort was read
        ("data.atlas=schaefer", "data.n_parcels=32: the schaefer atlas comes in 100, 200,"),
    ],
)
def test_cli_prepare_checks_the_data_config_before_reading_a_run(
    override: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare built the source directly: every run was extracted, then a traceback.
    monkeypatch.setenv("MODELCYCLE_HOME", str(tmp_path / "ws"))
    done = runner.invoke(app, ["data", "prepare", override])
    assert done.exit_code == 2, done.stdout
    assert message in " ".join(done.stdout.split()) and "Traceback" not in done.stdout
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("experiment", ["twins", "image_rice"])
def test_cli_prepare_refuses_an_experiment_with_nothing_to_prepare(
    experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It prepared the functional cohort anyway, whatever experiment was named.
    monkeypatch.setenv("MODELCYCLE_HOME", str(tmp_path / "ws"))
    done = runner.invoke(app, ["data", "prepare", f"experiment={experiment}"])
    assert done.exit_code == 2, done.stdout
    assert "nothing to prepare" in done.stdout and "experiment=twins_functional" in done.stdout
    assert not (tmp_path / "ws").exists()


def test_fetch_func_asks_openneuro_for_the_rest_runs(
    real_qtim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, object]] = []

    def fake_download(**kwargs: object) -> None:  # the network boundary
        calls.append(kwargs)
        target = Path(str(kwargs["target_dir"]))
        for name in ("participants.tsv", "participants.json", "dataset_description.json"):
            shutil.copyfile(real_qtim / name, target / name)
        func = target / "sub-0001" / "ses-01" / "func"
        func.mkdir(parents=True)
        (func / "sub-0001_ses-01_task-rest_bold.nii.gz").write_bytes(b"x")
        shutil.copyfile(
            real_qtim / "sidecars" / "sub-0001_ses-01_task-rest_bold.json",
            func / "sub-0001_ses-01_task-rest_bold.json",
        )

    monkeypatch.setattr(openneuro, "download", fake_download)
    record = fetch_functional(tmp_path / "dl")
    assert list(calls[0]["include"]) == list(FUNCTIONAL_FILES)  # type: ignore[call-overload]
    assert "sub-0001/ses-01/func/sub-0001_ses-01_task-rest_bold.nii.gz" in record.files


def test_an_unknown_dataset_or_modality_lists_the_valid_ones(workspace: Path) -> None:
    done = runner.invoke(app, ["data", "fetch", "qtim", "--modality", "dwi"])
    assert done.exit_code != 0 and "structural or func" in done.output


@pytest.mark.slow
def test_pipeline_end_to_end_from_nothing_to_a_gated_release(
    real_qtim: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing on disk: the synthetic cohort is written, prepared in two processes, then
    # cross-validated, the final model fitted, and the registry gate decides on release.
    monkeypatch.setenv("QTIM_ROOT", str(real_qtim))
    overrides = [
        "data.families=24",
        "data.n_volumes=80",
        "data.masker.min_volumes=40",
        "data.n_jobs=2",
        "data.progress=false",
        "cv.n_folds=3",
        "trainer.max_epochs=6",
        "trainer.min_epochs=1",
        "trainer.patience=3",
        "trainer.progress_bar=false",
    ]
    done = runner.invoke(app, ["pipeline", "twins_functional", *overrides])
    assert done.exit_code == 0, done.stdout
    assert "auc_mz_vs_unrelated" in done.stdout and "auc_dz_vs_unrelated" in done.stdout
    assert (workspace / "data" / "qtim-synthetic" / "participants.tsv").is_file()
    report = next((workspace / "reports").glob("twins_functional-*"))
    summary = json.loads((report / "summary.json").read_text())
    assert summary["data"]["MZ_pairs"] > 0 and len(summary["folds"]) == 3
    assert summary["data"]["retest_subjects"] >= 2  # rescanned in ses-02, as in QTIM
    assert "retest_top1" in done.stdout
    if "registered twins_functional version 1" in done.stdout:
        assert "exported ONNX" in done.stdout and "parity max abs" in done.stdout
        exports = list((workspace / "exports").glob("twins_functional-v1/model/onnx/*.onnx"))
        assert exports
    else:  # the gate refused: both numbers are named, nothing is half-released
        assert "does not beat the baseline" in done.stdout
        assert not (workspace / "exports").exists()
    again = runner.invoke(app, ["data", "prepare", *overrides[:4]])
    assert "0 computed" in again.stdout  # the pipeline's parcel series are reused


def test_a_registered_functional_model_exports_and_serves_connectome_pairs(
    tiny: tuple[TwinsFunctionalTask, FunctionalData], tmp_path: Path
) -> None:
    # As the serving fixtures do for structural twins: a pipeline-shaped run holding an
    # untrained model (it starts at the baseline) with stated CV metrics, so the gate passes.
    from fastapi.testclient import TestClient

    from modelcycle.export import export_version
    from modelcycle.pipeline import run_tags
    from modelcycle.registry import Registry
    from modelcycle.serving.app import ServeSettings, create_app
    from modelcycle.serving.loading import load_served

    task, data = tiny
    fold = task.final_fold(data, seed=0)
    servable = task.servable(task.model(data, fold), data, fold)
    tracker = Tracker(TrackingSettings(), tmp_path / "ws")
    with tracker.run("twins_functional") as run_id:
        metric = task.primary_metric
        tracker.set_tags(run_tags(task, "hash"))
        tracker.log_metrics({f"model_{metric}_mean": 0.9, f"baseline_{metric}_mean": 0.8})
        servable.save(tmp_path / "model")
        tracker.log_directory(tmp_path / "model", "model")
    registry = Registry(tracker.uri)
    version, _ = registry.register(run_id, "twins_functional")
    _, report = export_version(registry, "twins_functional/1", tmp_path / "exports")
    assert report.parity.passed
    registry.promote("twins_functional", "champion", version.version, "test")
    served = load_served(registry, "twins_functional@champion", tmp_path / "cache", threads=1)
    with TestClient(create_app(lambda: [served], ServeSettings())) as client:
        examples = client.get("/v1/models/twins_functional/examples").json()["examples"]
        body = examples[0]["request"]
        answer = client.post("/v1/models/twins_functional/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert 0.0 <= answer.json()["outputs"]["probability"] <= 1.0
        # the page may take a and b from different pairs (GET /v1/models names the parts)
        assert client.get("/v1/models").json()["models"][0]["request_parts"] == ["a", "b"]
        assert examples[0]["parts"]["a"] == f"{body['a']['sex']}, {body['a']['age']:.0f} y"
        mixed = {"a": body["a"], "b": examples[-1]["request"]["b"]}
        assert client.post("/v1/models/twins_functional/predict", json=mixed).status_code == 200
        body["a"]["connectome"] = body["a"]["connectome"][:3]
        refused = client.post("/v1/models/twins_functional/predict", json=body)
        assert refused.status_code == 422 and "12×12" in refused.text
    # The robustness study runs on the served model, every shift the adapter defines.
    from modelcycle.monitoring.drift import DriftSettings
    from modelcycle.monitoring.robustness import robustness

    study = robustness(
        registry, "twins_functional@champion", tmp_path / "ws", DriftSettings(), 10, 5
    )
    kinds = {p.shift for p in study.points}
    assert kinds == {"none", *served.adapter.shift_sizes}, kinds
    assert all(0 <= p.metric <= 1 for p in study.points)
    assert (study.out / "robustness.json").is_file() and (study.out / "robustness.png").is_file()


def test_robustness_shifts_move_the_connectomes_as_named(
    tiny: tuple[TwinsFunctionalTask, FunctionalData],
) -> None:
    task, data = tiny
    fold = task.final_fold(data, seed=0)
    servable = task.servable(task.model(data, fold), data, fold)
    adapter = FunctionalServing(servable.info)
    inputs = servable.held_out
    before = [x.copy() for x in inputs]

    offset = adapter.shift(inputs, "global offset", 0.05, seed=1)
    for i in (0, 2):
        np.testing.assert_allclose(offset[i] - inputs[i], 0.05, atol=1e-6)
    for i in (1, 3):  # covariates stay as they were
        np.testing.assert_array_equal(offset[i], inputs[i])

    noisy = adapter.shift(inputs, "noise", 0.5, seed=1)
    sd = np.concatenate([inputs[0], inputs[2]]).std(axis=0)
    z = np.concatenate([noisy[0] - inputs[0], noisy[2] - inputs[2]]) / sd
    assert abs(z.mean()) < 0.1 and z.std() == pytest.approx(0.5, rel=0.15)
    np.testing.assert_array_equal(adapter.shift(inputs, "noise", 0.5, seed=1)[0], noisy[0])

    dropped = adapter.shift(inputs, "parcel dropout", 0.2, seed=1)
    first, second = np.triu_indices(adapter.n, k=1)
    lost = 0
    for shifted, original in ((dropped[0], inputs[0]), (dropped[2], inputs[2])):
        for row, was in zip(shifted, original, strict=True):
            zero = row == 0
            # the parcels whose every edge is 0; exactly their edges changed, to 0
            gone = [p for p in range(adapter.n) if zero[(first == p) | (second == p)].all()]
            touched = np.isin(first, gone) | np.isin(second, gone)
            np.testing.assert_array_equal(zero, touched)
            np.testing.assert_array_equal(row[~touched], was[~touched])
            lost += len(gone)
    rows = 2 * len(inputs[0])
    assert 0.1 < lost / (rows * adapter.n) < 0.3  # about a share 0.2 of the parcels

    with pytest.raises(ValueError, match="unknown shift 'site offset'"):
        adapter.shift(inputs, "site offset", 0.1, seed=1)
    for x, y in zip(inputs, before, strict=True):  # the caller's rows are never changed
        np.testing.assert_array_equal(x, y)
