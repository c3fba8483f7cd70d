"""The registry on a real MLflow SQLite store: gate, lineage, aliases, audit, hooks."""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from modelcycle.registry import (
    GateError,
    Registry,
    RegistryError,
    champion_note,
    latest_pipeline_run,
)
from modelcycle.registry_hooks import AliasMoved, CommandHook
from modelcycle.servable import ServableError, ServableModel
from modelcycle.tracking import Tracker, TrackingSettings, workspace_lock
from serving_fixtures import ServedWorkspace

METRIC = "auc_twin_vs_unrelated"


@pytest.fixture
def store(tmp_path: Path) -> Tracker:
    return Tracker(TrackingSettings(experiment="reg"), tmp_path / "ws")


def _run(
    store: Tracker,
    model: float,
    baseline: float,
    tmp_path: Path,
    with_model: bool = True,
    predicts: str = "twins",
    params: dict[str, object] | None = None,
    data_hash: str = "d" * 64,
) -> str:
    """A finished parent run shaped like a pipeline's: tags, mean metrics, config, model/."""
    with store.run("twins") as run_id:
        if params is not None:
            store.log_params(params)
        store.set_tags(
            {
                "task": "twins" if predicts == "twins" else "image",
                "model_name": predicts,
                "primary_metric": METRIC,
                "data_hash": data_hash,
                "packages": json.dumps({"torch": "x"}),
                "packages_git": json.dumps({"plugin": {"git_sha": "def", "git_dirty": "True"}}),
                "git_sha": "abc",
                "git_dirty": "False",
            }
        )
        store.log_metrics({f"model_{METRIC}_mean": model, f"baseline_{METRIC}_mean": baseline})
        config = tmp_path / f"config-{run_id}.yaml"
        config.write_text("seed: 42\n")
        store.log_artifacts([config])
        if with_model:
            servable = ServableModel(
                "twins", torch.nn.Linear(3, 1), ["x"], ["y"], [np.ones((2, 3), np.float32)]
            )
            servable.save(tmp_path / run_id / "model")
            store.log_directory(tmp_path / run_id / "model", "model")
    return run_id


def test_register_records_lineage_and_the_challenger_alias(store: Tracker, tmp_path: Path) -> None:
    run_id = _run(store, 0.94, 0.91, tmp_path)
    registry = Registry(store.uri)
    version, _ = registry.register(run_id, "twins")
    assert version.version == "1"
    assert registry.resolve("twins@challenger").version == "1"
    assert registry.resolve("twins/1").run_id == run_id
    tags = version.tags
    assert tags["lineage.git_sha"] == "abc" and tags["lineage.data_hash"] == "d" * 64
    assert json.loads(tags["lineage.packages"]) == {"torch": "x"}
    plugin = json.loads(tags["lineage.packages_git"])["plugin"]  # a task from its own checkout
    assert plugin == {"git_sha": "def", "git_dirty": "True"}
    assert float(tags[f"metric.model_{METRIC}_mean"]) == pytest.approx(0.94)
    assert float(tags[f"metric.baseline_{METRIC}_mean"]) == pytest.approx(0.91)
    assert tags["lineage.reference_sample"].endswith("model/reference.npz")
    assert tags["lineage.held_out_sample"].endswith("model/held_out.npz")
    local = registry.download(version, tmp_path / "dl")
    loaded = ServableModel.load(local)
    assert loaded.task == "twins" and loaded.held_out[0].shape == (2, 3)


def test_a_run_of_another_kind_is_not_registered_under_a_model(
    store: Tracker, tmp_path: Path
) -> None:
    # The gate compares scores only: a sign-language run (macro-F1 0.99) outscored the rice
    # model (0.58), was registered and promoted as image_rice, and answered rice grains
    # with letters.
    registry = Registry(store.uri)
    rice, _ = registry.register(_run(store, 0.58, 0.42, tmp_path, predicts="image_rice"), "rice")
    assert rice.tags["lineage.model_name"] == "image_rice"
    letters = _run(store, 0.99, 0.08, tmp_path, predicts="image_signmnist")
    with pytest.raises(RegistryError, match=r"predicts image_signmnist, and rice version 1 pre"):
        registry.register(letters, "rice")
    assert [str(v.version) for v in registry.client.search_model_versions("name = 'rice'")] == ["1"]
    registry.register(letters, "letters")  # a name of its own starts its own lineage
    more_rice, _ = registry.register(
        _run(store, 0.6, 0.42, tmp_path, predicts="image_rice"), "rice"
    )
    assert more_rice.version == "2"


def test_a_download_is_made_once_per_source_and_tags_and_shared_under_a_lock(
    store: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.artifacts

    registry = Registry(store.uri)
    version, _ = registry.register(_run(store, 0.94, 0.91, tmp_path), "twins")
    real, calls = mlflow.artifacts.download_artifacts, []

    def counted(**kwargs: str) -> str:
        calls.append(kwargs["dst_path"])
        return real(**kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted)
    dst = tmp_path / "cache" / "twins-v1"
    first = registry.download(version, dst)
    mtime = (first / "held_out.npz").stat().st_mtime_ns
    # a second process (a second worker) gets the finished copy, not a rewrite under it
    assert registry.download(registry.resolve("twins/1"), dst) == first
    assert len(calls) == 1 and (first / "held_out.npz").stat().st_mtime_ns == mtime
    registry.set_tags(version, {"export.fp32.sha256": "f" * 64})  # e.g. a new export
    assert registry.download(registry.resolve("twins/1"), dst) == first
    assert len(calls) == 2  # new tags: downloaded again
    assert ServableModel.load(first).task == "twins"


def test_gate_refuses_a_model_that_does_not_beat_its_baseline(
    store: Tracker, tmp_path: Path
) -> None:
    run_id = _run(store, 0.90, 0.91, tmp_path)
    registry = Registry(store.uri)
    with pytest.raises(GateError, match=r"0\.9000 does not beat the baseline's 0\.9100"):
        registry.register(run_id, "twins")
    with pytest.raises(RegistryError, match="No registered model 'twins'"):
        registry.history("twins")


def test_gate_against_the_champion_then_promotion_and_audit(store: Tracker, tmp_path: Path) -> None:
    registry = Registry(store.uri)
    first = _run(store, 0.94, 0.91, tmp_path)
    registry.register(first, "twins")
    registry.promote("twins", reason="first release")
    worse = _run(store, 0.93, 0.91, tmp_path)
    with pytest.raises(GateError, match=r"0\.9300 does not beat the champion.*version 1.*0\.9400"):
        registry.register(worse, "twins")
    better = _run(store, 0.95, 0.91, tmp_path)
    version, _ = registry.register(better, "twins")
    assert version.version == "2"
    assert registry.resolve("twins@champion").version == "1"  # registering never promotes
    registry.promote("twins", reason="beats v1 by 0.01")
    assert registry.resolve("twins@champion").version == "2"
    # "02" is version 2 to MLflow: it moved nothing, though it was audited and announced
    assert registry.promote("twins", version="02") is None
    moves = [(m.alias, m.previous_version, m.version, m.reason) for m in registry.history("twins")]
    assert moves == [
        ("challenger", None, "1", "registered"),
        ("champion", None, "1", "first release"),
        ("challenger", "1", "2", "registered"),
        ("champion", "1", "2", "beats v1 by 0.01"),
    ]


def test_registering_a_fold_names_the_run_to_register(store: Tracker) -> None:
    # it said "has no task tag; pass --name", and with --name "not a finished pipeline run"
    with store.run("twins") as parent, store.run("fold-0", nested=True) as fold:
        pass
    registry = Registry(store.uri)
    with pytest.raises(RegistryError, match=rf"^Run {fold} is a fold or trial of run {parent}; "):
        registry.task_of(fold)
    with store.run("by hand") as other:
        pass
    with pytest.raises(RegistryError, match="not a run of `modelcycle train` or `pipeline`"):
        registry.task_of(other)


def test_an_audit_entry_is_never_overwritten(store: Tracker, tmp_path: Path) -> None:
    # Keys were the count of entries so far: two promotes at once, or any move after an
    # entry was deleted (the MLflow UI deletes tags), wrote over the newest entry.
    registry = Registry(store.uri)
    registry.register(_run(store, 0.94, 0.91, tmp_path), "twins")
    registry.promote("twins", reason="first")
    registry.promote("twins", alias="staging", version="1", reason="second")
    tags = registry.client.get_registered_model("twins").tags
    oldest = min(k for k in tags if k.startswith("audit."))
    registry.client.delete_registered_model_tag("twins", oldest)  # "registered", by hand
    registry.promote("twins", alias="canary", version="1", reason="third")
    assert [m.reason for m in registry.history("twins")] == ["first", "second", "third"]
    # entries written under the old six-digit keys stay first, in their order
    old = AliasMoved("twins", "old", "1", None, "kept", "someone", "2026-01-01T00:00:00+00:00")
    registry.client.set_registered_model_tag("twins", "audit.000000", json.dumps(old.payload()))
    assert [m.reason for m in registry.history("twins")] == ["kept", "first", "second", "third"]


FIVE_FOLDS = {"cv": {"n_folds": 5}, "seed": 42, "trainer": {"max_epochs": 30}}


@pytest.mark.parametrize(
    ("params", "data_hash", "said"),
    [
        ({"cv": {"n_folds": 2}, "seed": 42}, "d" * 64, "cv.n_folds 5 there, 2 here"),
        ({"cv": {"n_folds": 5}, "seed": 7}, "d" * 64, "seed 42 there, 7 here"),
        (FIVE_FOLDS, "e" * 64, f"data {'d' * 12}… there, {'e' * 12}… here"),
    ],
)
def test_a_champion_scored_on_other_folds_or_data_is_not_compared(
    store: Tracker, tmp_path: Path, params: dict[str, object], data_hash: str, said: str
) -> None:
    # A `debug=tiny` run's 2-fold mean was compared with the 5-fold champion's as if the
    # two were measured alike; on few folds a mean is mostly the split's luck.
    registry = Registry(store.uri)
    registry.register(_run(store, 0.94, 0.91, tmp_path, params=FIVE_FOLDS), "twins")
    registry.promote("twins")
    lower = _run(store, 0.92, 0.91, tmp_path, params=params, data_hash=data_hash)
    version, _ = registry.register(lower, "twins")  # the baseline still gates it
    verdict = version.tags["gate.champion"]
    assert verdict == f"not compared: version 1 was scored otherwise ({said})"
    assert "compare the two before you promote it" in str(champion_note(version))
    assert registry.resolve("twins@champion").version == "1"
    below_baseline = _run(store, 0.90, 0.91, tmp_path, params=params, data_hash=data_hash)
    with pytest.raises(GateError, match="does not beat the baseline's"):
        registry.register(below_baseline, "twins")


def test_a_champion_scored_alike_is_compared_and_the_version_says_so(
    store: Tracker, tmp_path: Path
) -> None:
    registry = Registry(store.uri)
    first, _ = registry.register(_run(store, 0.94, 0.91, tmp_path, params=FIVE_FOLDS), "twins")
    assert first.tags["gate.champion"] == "none: no champion yet"
    assert champion_note(first) is None
    registry.promote("twins")
    # other training settings, the same folds: compared
    alike = FIVE_FOLDS | {"trainer": {"max_epochs": 60}}
    with pytest.raises(GateError, match="does not beat the champion"):
        registry.register(_run(store, 0.93, 0.91, tmp_path, params=alike), "twins")
    better, _ = registry.register(_run(store, 0.95, 0.91, tmp_path, params=alike), "twins")
    assert better.tags["gate.champion"] == f"beat version 1 ({METRIC} 0.9500 against 0.9400)"


def test_alias_moves_run_hooks_and_a_failing_hook_never_undoes_the_move(
    store: Tracker, tmp_path: Path
) -> None:
    out = tmp_path / "event.txt"
    script = (
        "import os,sys; "
        "open(sys.argv[1],'w').write(sys.argv[2] + ' ' + os.environ['MODELCYCLE_EVENT'])"
    )
    hooks = [
        CommandHook([sys.executable, "-c", "import sys; sys.exit(3)"]),
        CommandHook([sys.executable, "-c", script, str(out), "{model}@{alias}={version}"]),
    ]
    registry = Registry(store.uri, hooks)
    _, results = registry.register(_run(store, 0.94, 0.91, tmp_path), "twins")
    assert [r.ok for r in results] == [False, True]
    assert "3" in results[0].detail
    tag, payload = out.read_text().split(" ", 1)
    assert tag == "twins@challenger=1"
    assert json.loads(payload)["previous_version"] is None
    assert registry.resolve("twins@challenger").version == "1"


def test_clear_errors_for_bad_references_and_runs(store: Tracker, tmp_path: Path) -> None:
    registry = Registry(store.uri)
    with pytest.raises(RegistryError, match="no model/ artifact"):
        registry.register(_run(store, 0.94, 0.91, tmp_path, with_model=False), "twins")
    with pytest.raises(RegistryError, match="No run 'nope'") as unknown:
        registry.register("nope", "twins")
    assert "mlflow ui --backend-store-uri" in str(unknown.value)  # how to find one, not MLflow's
    registry.register(_run(store, 0.94, 0.91, tmp_path), "twins")
    with pytest.raises(RegistryError, match="write NAME@ALIAS"):
        registry.resolve("twins")
    with pytest.raises(
        RegistryError, match=r"has no alias 'prod'; it has @challenger \(version 1\)"
    ):
        registry.resolve("twins@prod")
    with pytest.raises(RegistryError, match=r"no alias '1'; .* Version 1\? Write twins/1\.$"):
        registry.resolve("twins@1")
    for half in ("@champion", "twins@", "/1", "twins/"):  # "@champion": MLflow's own words
        with pytest.raises(RegistryError, match=rf"^'{half}': write both parts, NAME@ALIAS"):
            registry.resolve(half)
    with pytest.raises(
        RegistryError, match=r"has no version '9': its versions are 1; `modelcycle hi"
    ):
        registry.promote("twins", version="9")
    assert latest_pipeline_run(store.uri, "reg") == registry.resolve("twins@challenger").run_id


@pytest.mark.parametrize(
    ("alias", "message"),
    [
        ("", "use 1-255 letters, digits, _ or -"),
        ("Champion!", "use 1-255 letters, digits, _ or -"),
        ("x" * 256, "use 1-255 letters"),
        ("latest", "reserved by MLflow"),
        ("V3", "reserved by MLflow"),
    ],
)
def test_a_bad_alias_is_refused_before_anything_is_written(
    store: Tracker, tmp_path: Path, alias: str, message: str
) -> None:
    registry = Registry(store.uri)
    run_id = _run(store, 0.94, 0.91, tmp_path)
    with pytest.raises(RegistryError, match=message):
        registry.register(run_id, "twins", alias=alias)
    with pytest.raises(RegistryError, match="No registered model 'twins'"):
        registry.history("twins")  # no version was created without its alias
    registry.register(run_id, "twins")
    with pytest.raises(RegistryError, match=message):
        registry.promote("twins", alias=alias)
    assert [(e.alias, e.version) for e in registry.history("twins")] == [("challenger", "1")]


def test_promoting_to_the_version_an_alias_holds_moves_nothing(
    store: Tracker, tmp_path: Path
) -> None:
    # Before, `promote twins` run twice appended "champion 1 → 1" to the history and ran the
    # hooks again (a CI deploy triggered for no change).
    calls = tmp_path / "calls"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10))"
    hook = CommandHook([sys.executable, "-c", script, str(calls), "{alias}={version}"])
    registry = Registry(store.uri, [hook])
    registry.register(_run(store, 0.94, 0.91, tmp_path), "twins")
    assert registry.promote("twins") is not None
    assert registry.promote("twins") is None  # the challenger, v1, is already champion
    assert registry.promote("twins", version="1", reason="again") is None
    assert calls.read_text().split() == ["challenger=1", "champion=1"]
    assert [(m.alias, m.version) for m in registry.history("twins")] == [
        ("challenger", "1"),
        ("champion", "1"),
    ]
    staging = registry.promote("twins", alias="staging", version="1")  # another alias moves
    assert staging is not None and registry.resolve("twins@staging").version == "1"


def test_promote_without_a_challenger_says_what_to_do(store: Tracker, tmp_path: Path) -> None:
    registry = Registry(store.uri)
    registry.register(_run(store, 0.94, 0.91, tmp_path), "twins", alias="candidate")
    with pytest.raises(RegistryError, match="no challenger to promote; pass --version"):
        registry.promote("twins")


def test_a_tampered_model_file_is_refused(tmp_path: Path) -> None:
    servable = ServableModel(
        "t", torch.nn.Linear(2, 1), ["x"], ["y"], [np.zeros((1, 2), np.float32)]
    )
    servable.save(tmp_path / "m")
    with (tmp_path / "m" / "model.pt").open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(ServableError, match="does not match the manifest"):
        ServableModel.load(tmp_path / "m")


def test_gate_compares_full_precision_not_rounded_tags(store: Tracker, tmp_path: Path) -> None:
    registry = Registry(store.uri)
    registry.register(_run(store, 0.94000049, 0.91, tmp_path), "twins")
    registry.promote("twins")
    with pytest.raises(GateError, match="does not beat the champion"):
        registry.register(_run(store, 0.94000049, 0.91, tmp_path), "twins")


def test_a_run_already_registered_is_not_registered_again(store: Tracker, tmp_path: Path) -> None:
    # The refusal read "0.9400 does not beat the champion (version 1) at 0.9400": true, but
    # version 1 was that very run; and once the champion moved to a weaker version, the
    # same run would have become a second version.
    registry = Registry(store.uri)
    first = _run(store, 0.94, 0.91, tmp_path)
    registry.register(first, "twins")
    registry.promote("twins", reason="first release")
    with pytest.raises(
        GateError,
        match=rf"run {first} is already twins version 1 "
        r"\(@challenger, @champion\)",
    ):
        registry.register(first, "twins")
    weaker = _run(store, 0.92, 0.91, tmp_path)
    registry.client.create_model_version(  # a weaker version, made champion by hand
        "twins", source=registry.get("twins", "1").source, run_id=weaker
    )
    registry.promote("twins", version="2", reason="rollback drill")
    with pytest.raises(GateError, match=rf"run {first} is already twins version 1 \(@challenger\)"):
        registry.register(first, "twins")
    assert len(registry.client.search_model_versions("name = 'twins'")) == 2  # no third


@pytest.mark.parametrize("name", ["bad/name", "a:b", "", "  ", "twins x"])
def test_a_model_name_commands_cannot_carry_is_refused_before_anything_is_written(
    store: Tracker, tmp_path: Path, name: str
) -> None:
    # "bad/name" reached MLflow's create_registered_model and its exception; "" and "twins x"
    # were registered, and then printed unquoted in the commands suggested for them.
    registry = Registry(store.uri)
    run_id = _run(store, 0.94, 0.91, tmp_path)
    with pytest.raises(RegistryError, match=rf"^model name '{name}': use 1-255 letters, dig"):
        registry.register(run_id, name)
    assert registry.client.search_registered_models() == []
    for reads in (registry.history, registry.aliases):  # what promote and history read
        with pytest.raises(RegistryError, match=rf"^model name '{name}'"):
            reads(name)


@pytest.mark.parametrize("name", ["tw?in", "tw#in", "50%", "na\u00efve", "-twins", ".twins"])
def test_a_model_name_a_url_path_cannot_carry_as_it_is_is_refused(
    store: Tracker, tmp_path: Path, name: str
) -> None:
    # MLflow took these, and /v1/models/NAME/predict as written (curl, the load test, a
    # proxy) reached no model: '?' and '#' end the path, '%' starts an escape.
    registry = Registry(store.uri)
    run_id = _run(store, 0.94, 0.91, tmp_path)
    with pytest.raises(RegistryError) as err:
        registry.register(run_id, name)
    assert str(err.value) == (
        f"model name {name!r}: use 1-255 letters, digits, '.', '_' or '-', the first a letter "
        "or digit, e.g. twins or twins_v2 (a name is part of the server's URLs, "
        "/v1/models/NAME/predict, as it is)."
    )
    assert registry.client.search_registered_models() == []
    version, _ = registry.register(run_id, "twins.v2-b_1")  # what the rule allows
    assert version.name == "twins.v2-b_1"


def test_alias_moves_at_once_each_audit_the_one_before(two_versions: ServedWorkspace) -> None:
    # Two registrations at once (two pipelines on one workspace) both read the challenger
    # before either moved it: both audit entries said "from 1", one of them wrongly.
    registry = two_versions.registry
    moved: list[str] = []

    def move(version: str) -> None:
        Registry(registry.uri).move_alias("twins", "staging", version, f"to {version}")
        moved.append(version)

    with workspace_lock(two_versions.root):  # another process reading and moving the alias
        waiting = threading.Thread(target=move, args=("1",))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not moved  # it waits to read until the other is done
    waiting.join(timeout=60)
    assert moved == ["1"]
    movers = [threading.Thread(target=move, args=(v,)) for v in ("2", "1", "2", "1")]
    for mover in movers:
        mover.start()
    deadline = time.monotonic() + 120
    for mover in movers:
        mover.join(timeout=max(0.0, deadline - time.monotonic()))
    assert len(moved) == 5
    staging = [e for e in registry.history("twins") if e.alias == "staging"]
    assert len(staging) == 5  # none lost
    for before, entry in itertools.pairwise(staging):
        assert entry.previous_version == before.version, [e.payload() for e in staging]


def test_the_models_and_each_versions_aliases_metric_and_export_are_listed(
    store: Tracker, tmp_path: Path
) -> None:
    # Nothing listed what a registry held: `history` shows alias moves only.
    from typer.testing import CliRunner

    from modelcycle.cli import app
    from modelcycle.registry_listing import model_rows, version_rows

    registry = Registry(store.uri)
    assert model_rows(registry) == []
    workspace = f"workspace={tmp_path / 'ws'}"
    empty = CliRunner().invoke(app, ["models", workspace])
    assert empty.exit_code == 0 and "No registered models in sqlite:" in empty.stdout
    v1, _ = registry.register(_run(store, 0.93, 0.90, tmp_path), "twins")
    registry.promote("twins")
    v2, _ = registry.register(_run(store, 0.95, 0.90, tmp_path), "twins")
    v3, _ = registry.register(_run(store, 0.96, 0.90, tmp_path), "twins")
    registry.set_tags(v1, {"export.fp32.sha256": "a" * 64, "export.int8.sha256": "b" * 64})
    failed = "failed: ParityError: max abs error 0.2"
    registry.set_tags(v2, {"export.fp32.sha256": "a" * 64, "export.status": failed})
    rows = version_rows(registry, "twins")
    assert [(r.version, r.aliases, r.export, r.variants) for r in rows] == [
        ("3", ["challenger"], "not exported", []),
        ("2", [], failed, []),  # its files are there, and not servable
        ("1", ["champion"], "ok", ["fp32", "int8"]),  # exported before the status tag
    ]
    assert [r.model_mean for r in rows] == pytest.approx([0.96, 0.95, 0.93])
    assert [r.baseline_mean for r in rows] == pytest.approx([0.90] * 3) and rows[0].metric == METRIC
    assert rows[0].run_id == v3.run_id and rows[0].git_sha == "abc" and rows[0].registered
    (model,) = model_rows(registry)
    assert (model.name, model.task, model.versions, model.latest) == ("twins", "twins", 3, "3")
    assert model.aliases == {"champion": "1", "challenger": "3"}

    listed = CliRunner().invoke(app, ["models", workspace])
    assert listed.exit_code == 0 and "@challenger → 3, @champion → 1" in listed.stdout
    table = CliRunner().invoke(app, ["models", "twins", workspace])
    lines = [" ".join(line.split()) for line in table.stdout.splitlines()]
    assert table.exit_code == 0, table.stdout
    assert any("│ 1 │" in line and "ok (fp32, int8)" in line for line in lines), lines
    assert any("│ 2 │" in line and "failed: ParityError" in line for line in lines), lines
    as_json = CliRunner().invoke(app, ["models", "twins", workspace, "--json"])
    assert [r["version"] for r in json.loads(as_json.stdout)] == ["3", "2", "1"]
    unknown = CliRunner().invoke(app, ["models", "twinz", workspace])
    assert (
        unknown.exit_code == 2
        and "No registered model 'twinz'; registered: twins" in unknown.stdout
    )

    # promote said nothing of a version with no finished export: servers following the
    # alias kept the old version and logged a failed reload every few seconds
    for version, said in [("3", "is not exported"), ("2", "has a failed export (ParityError")]:
        moved = CliRunner().invoke(app, ["promote", "twins", "--version", version, workspace])
        text = " ".join(moved.stdout.split())
        assert moved.exit_code == 0 and f"twins@champion → version {version}" in text, text
        assert f"note: twins version {version} {said}" in text
        assert "until `modelcycle export twins@champion` succeeds" in text
    back = CliRunner().invoke(app, ["promote", "twins", "--version", "1", workspace])
    assert back.exit_code == 0 and "note:" not in back.stdout, back.stdout
