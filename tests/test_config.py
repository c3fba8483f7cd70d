import os
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from modelcycle.config import (
    ConfigError,
    assemble,
    build_registry,
    compose_config,
    experiment_names,
    loadtest_config,
    monitor_config,
    serve_config,
    sweep_config,
    tracking_settings,
)
from modelcycle.data.qtim import QTIMSource
from modelcycle.data.tables import DataError
from modelcycle.serving.loading import VariantChoice
from modelcycle.tasks import base
from modelcycle.tasks.twins import TwinsTask
from modelcycle.tracking import Tracker, TrackingSettings, tracking_uri


def test_serve_threads_follow_the_cores_unless_set() -> None:
    cores = len(os.sched_getaffinity(0))
    assert serve_config(compose_config([])).settings.threads == cores
    assert serve_config(compose_config(["serve.threads=1"])).settings.threads == 1


def test_serve_settings_from_config(tmp_path: os.PathLike[str]) -> None:
    config = serve_config(
        compose_config([f"workspace={tmp_path}", "serve.port=9001", "serve.cors_origins=[a]"])
    )
    assert config.port == 9001 and config.host == "127.0.0.1"
    assert config.settings.cors_origins == ("a",)
    assert config.capture_path == Path(tmp_path) / "capture.db" == config.capture_file
    assert config.cache_dir == Path(tmp_path) / "serving"
    off = serve_config(compose_config([f"workspace={tmp_path}", "serve.capture=false"]))
    assert off.capture_path is None and off.capture_file == config.capture_file


def test_the_servers_files_may_live_outside_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A workspace mounted read-only (a shared registry) could not be served: the model
    # copies and the capture store had to be inside it.
    monkeypatch.chdir(tmp_path)
    config = serve_config(
        compose_config(
            [
                f"workspace={tmp_path / 'ws'}",
                "serve.cache_dir=copies",
                "serve.capture_path='~/c.db'",
            ]
        )
    )
    assert config.cache_dir == tmp_path / "copies"
    assert config.capture_path == Path.home() / "c.db"
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    for override, message in [
        (
            "serve.capture_path=folder",
            r"serve.capture_path=folder: .*folder is a folder; give a file",
        ),
        ("serve.cache_dir=file", r"serve.cache_dir=file: .*file is a file; give a folder path"),
        ("serve.cache_dir=5", r"serve.cache_dir=5: give a folder path, or null"),
        ("serve.capture_path=''", r"serve.capture_path='': give a file path, or null"),
    ]:
        with pytest.raises(ConfigError, match=message):
            serve_config(compose_config([f"workspace={tmp_path / 'ws'}", override]))


def test_where_one_run_tracked_does_not_decide_where_the_next_config_tracks(
    tmp_path: Path,
) -> None:
    """MLflow sets MLFLOW_TRACKING_URI in the process when a run starts: were logger.uri to
    read it, every later command of the process (tests, a notebook) tracked in the first
    workspace."""
    first, second = tmp_path / "first", tmp_path / "second"
    tracker = Tracker(TrackingSettings(), first)
    with tracker.run("one"):
        pass
    assert os.environ.get("MLFLOW_TRACKING_URI") == f"sqlite:///{first / 'mlflow.db'}"
    cfg = compose_config([f"workspace={second}"])
    assert tracking_uri(tracking_settings(cfg), second) == f"sqlite:///{second / 'mlflow.db'}"


def test_unknown_serve_key_names_the_key_and_the_ones_it_takes() -> None:
    said = r"^serve\.max_batches=3: .* takes no 'max_batches'; it takes api_key, body_limit, "
    with pytest.raises(ConfigError, match=said + r".*max_batch, "):
        serve_config(compose_config(["+serve.max_batches=3"]))


def test_max_connections_is_a_positive_whole_number_or_null() -> None:
    assert serve_config(compose_config([])).max_connections == 256
    assert serve_config(compose_config(["serve.max_connections=null"])).max_connections is None
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match=rf"serve.max_connections=.*{bad}.*or null"):
            serve_config(compose_config([f"serve.max_connections={bad}"]))


def test_serve_variant_is_fp32_or_int8_with_a_numeric_drop_limit() -> None:
    assert serve_config(compose_config([])).variant == VariantChoice("fp32", 0.01)
    chosen = serve_config(compose_config(["serve.variant=int8", "serve.int8_max_drop=-0.5"]))
    assert chosen.variant == VariantChoice("int8", -0.5)
    with pytest.raises(ConfigError, match=r"^serve\.variant='fp16': choose one of fp32, int8"):
        serve_config(compose_config(["serve.variant=fp16"]))
    with pytest.raises(ConfigError, match=r"serve.int8_max_drop='lots': give a number"):
        serve_config(compose_config(["serve.int8_max_drop=lots"]))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("serve.max_batch=0", r"^serve\.max_batch=0: give a whole number >= 1 \(1: no batching\)"),
        ("serve.max_batch=2.5", r"^serve\.max_batch=2.5: give a whole number >= 1"),
        ("serve.queue_limit=0", r"^serve\.queue_limit=0: give a whole number >= 1"),
        ("serve.body_limit=-5", r"^serve\.body_limit=-5: give a whole number >= 1 \(bytes\)"),
        ("serve.threads=-1", r"^serve\.threads=-1: give a whole number >= 1 \(null in the config"),
        ("serve.threads=0", r"^serve\.threads=0: give a whole number >= 1 \(null in the config"),
        ("serve.max_wait_ms=-1", r"^serve\.max_wait_ms=-1: give a finite number >= 0 \(0: never"),
        ("serve.max_wait_ms=soon", r"^serve\.max_wait_ms='soon': give a finite number >= 0"),
        ("serve.reload_seconds=-3", r"^serve\.reload_seconds=-3: give a finite number >= 0"),
        ("serve.deadline_ms=0", r"^serve\.deadline_ms=0: give the milliseconds a request may take"),
        ("serve.deadline_ms=inf", r"^serve\.deadline_ms=inf: give the milliseconds"),
        ("serve.api_key=''", r"^serve\.api_key is empty \(MODELCYCLE_API_KEY set to nothing\?\)"),
        ("serve.api_key=hunter2", r"^serve\.api_key has 7 characters; give one of at least 16"),
        ("serve.port=99999", r"^serve\.port=99999: give a TCP port number from 1 to 65535"),
        ("serve.port=0", r"^serve\.port=0: give a TCP port number"),
        ("serve.port=http", r"^serve\.port='http': give a TCP port number"),
    ],
)
def test_a_serve_setting_no_server_could_run_with_names_the_key(
    override: str, message: str
) -> None:
    # Each of these used to start a server that never answered (max_batch=0), refused every
    # request (queue_limit=0, deadline_ms=0, body_limit=-5), took any key as the empty one
    # or a word guessed in a few thousand requests,
    # or listened on another port than it said (99999 is 34463 modulo 65536). Each names
    # its key as the other groups do (`monitor.window=1`), not as "serve config: max_batch=0".
    with pytest.raises(ConfigError, match=message):
        serve_config(compose_config([override]))


def test_the_smallest_valid_serve_settings_pass() -> None:
    overrides = ["serve.max_batch=1", "serve.queue_limit=1", "serve.body_limit=1"]
    overrides += ["serve.max_wait_ms=0", "serve.reload_seconds=0", "serve.deadline_ms=0.5"]
    overrides += ["serve.port=1", "serve.threads=1", "serve.api_key=0123456789abcdef"]
    config = serve_config(compose_config(overrides))
    assert (config.port, config.settings.max_batch, config.settings.deadline_ms) == (1, 1, 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epoch=5"], r"^trainer.max_epoch \(did you mean trainer.max_epochs, "),
        (["max_epochs=5"], r"^max_epochs \(did you mean trainer.max_epochs\?\) is not a key"),
        (
            ["experiment=twins_functional", "data.synthetic=true"],
            r"^data.synthetic \(did you mean data.synthetic_dir\?\) is not a key",
        ),
        (
            ["trainer.max_epoch=5", "seed=1", "model.dropuot=3"],
            r"max_epochs, .*\) and model.dropuot \(did you mean model.dropout\?\) are not keys",
        ),
        (["trainer.nothing_like_it=1"], r"^trainer.nothing_like_it is not a key of the composed"),
        (["model=nope"], r"Cannot compose .*Could not find 'model/nope'"),  # Hydra's words
    ],
)
def test_a_key_the_config_lacks_is_named_with_the_keys_it_has(
    overrides: list[str], message: str
) -> None:
    # Hydra's own answer ended "To append to your config use +trainer.max_epoch=5": taking
    # it led to a second error at the constructor, and no close key was named.
    with pytest.raises(ConfigError, match=message) as raised:
        compose_config(overrides)
    assert "To append" not in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=abc"], r"seed='abc': give a whole number >= 0"),
        (["seed=4294967296"], r"seed=4294967296: give a whole number from 0 to 4294967295"),
        (["cv.n_folds=abc"], r"cv.n_folds='abc': give a whole number >= 1"),
        (["cv.n_folds=0"], r"cv.n_folds=0: give a whole number >= 1"),
        (["task.lr=abc"], r"task.lr='abc': give a number\."),
        (["task.lr=0"], r"lr=0: give a number above 0"),
        (["task.val_fraction=2"], r"val_fraction=2: give a share strictly between 0 and 1"),
        (["task.batch_size=0"], r"batch_size=0: give a whole number >= 1"),
        (["task.weight_decay=-1"], r"weight_decay=-1: give a number >= 0"),
        (["model.hidden=abc"], r"model.hidden='abc': give a list of whole numbers"),
        (["model.hidden=[64,x]"], r"model.hidden=\[64, 'x'\]: give a list of whole numbers"),
        (["model.dropout=lots"], r"model.dropout='lots': give a number"),
        (["trainer.max_epochs=x"], r"trainer.max_epochs='x': give a whole number >= 1"),
        (["trainer.progress_bar=maybe"], r"trainer.progress_bar='maybe': give true or false"),
        (["experiment=twins_functional", "task.lr=x"], r"task.lr='x': give a number"),
        (["experiment=twins_functional", "task.regress_covariates=no"], "give true or false"),
        (["experiment=twins_functional", "model.top_k=x"], r"model.top_k='x': give a whole"),
        (["model.hidden=[0]"], r"model.hidden=\[0\]: give each value >= 1"),  # trained, width 0
        (["model.hidden=[64,-3]"], r"model.hidden=\[64, -3\]: give each value >= 1"),
        (["model.dropout=1"], r"model.dropout=1: give a value from 0 to below 1"),
        (["experiment=twins_graph", "model.layers=0"], r"model.layers=0: give a value >= 1"),
        (["experiment=twins_graph", "model.top_k=0"], r"model.top_k=0: give a value >= 1"),
        (["experiment=twins_functional", "model.hidden=0"], r"model.hidden=0: give a value"),
        (["experiment=twins_functional", "model.denoise_rank=-1"], r"denoise_rank=-1: give"),
        # choices and text: each ended in a traceback once the data had loaded
        (["task.objective=abc"], r"task.objective='abc': give one of bce, contrastive, infonce"),
        (["experiment=twins_graph", "model.edges=x"], r"model.edges='x': give one of covariance"),
        (["experiment=twins_functional", "model.readout=x"], r"readout='x': give one of pool"),
        (["experiment=twins_functional", "data.kind=x"], r"data.kind='x': give one of correlation"),
        (
            ["experiment=twins_functional", "data.atlas=x"],
            r"data.atlas='x': give one of mni-kmeans",
        ),
        (["experiment=image_rice", "model.name=5"], r"model.name=5: give text"),
        (["data.download_dir=[1]"], r"data.download_dir=\[1\]: give a path\."),
        (
            ["data.root=123"],
            r"""data.root=123: give a path or null \(quote a name of digits: data.root="'123'"\)""",
        ),
        (["trainer.accelerator=[1]"], r"trainer.accelerator=\[1\]: use one of"),
        (["experiment=image_rice", "model.drop_rate=x"], r"model.drop_rate='x': give a number"),
        (["experiment=image_rice", "model.drop_rate=2"], r"drop_rate=2: give a value from 0"),
        (
            ["experiment=image_rice", "model.name=resnet999"],
            r"model.name='resnet999': timm has no such model; close: resnet50, .*resnet18",
        ),
        (["experiment=image_rice", "task.test_fraction=1"], r"test_fraction=1: give a share"),
        (["experiment=image_rice", "task.hflip=3"], r"task.hflip=3: give true or false"),
        # no held-out rows: trained, registered @challenger, then export's parity traceback
        (["experiment=image_rice", "task.held_out_rows=0"], r"held_out_rows=0: give a whole"),
        (["experiment=segmentation_bcss", "task.held_out_rows=0"], r"held_out_rows=0: give a"),
        (["experiment=node_wikics", "task.held_out_rows=0"], r"held_out_rows=0: give a whole"),
        # shares: -1 excluded every measure, and the error listed all 271 by name
        (["data.max_missing_measure=-1"], r"data.max_missing_measure=-1: give a share from 0"),
        (["data.max_missing_subject=5"], r"data.max_missing_subject=5: give a share from 0"),
        # band-pass and counts of the rest-fMRI cohort: tracebacks from nilearn, or Hydra's
        # wrapping of the source's own message
        (["experiment=twins_functional", "data.masker.low_pass=-1"], r"low_pass=-1: give a freq"),
        (
            ["experiment=twins_functional", "data.masker.high_pass=0.5"],
            r"masker.high_pass=0.5: give a frequency below masker.low_pass=0.1",
        ),
        (["experiment=twins_functional", "data.n_volumes=0"], r"^data.n_volumes=0: give a value"),
        # image sizes and counts: a traceback from the image reader, after the stand-in
        (["experiment=image_rice", "data.image_size=0"], r"data.image_size=0: give a value >= 1"),
        (["experiment=image_flowers", "data.max_per_class=0"], r"max_per_class=0: give a value"),
        (["experiment=image_rice", "data.per_class_synthetic=-1"], r"synthetic=-1: give a value"),
        # the stand-ins' sizes: a ValueError's traceback when the stand-in was written
        (
            ["experiment=image_flowers", "data.synthetic_classes=200"],
            r"^data.synthetic_classes=200: give a value from 2 to below 103\.$",
        ),
        (
            ["experiment=image_flowers", "data.synthetic_per_split=[2,1]"],
            r"^data.synthetic_per_split=\[2, 1\]: give 3 counts, .* in train, val and test\.$",
        ),
        (
            ["experiment=image_flowers", "data.synthetic_per_split=[2,0,1]"],
            r"^data.synthetic_per_split=\[2, 0, 1\]: give each value >= 1\.$",
        ),
        (
            ["experiment=image_signmnist", "data.synthetic_per_class=[3]"],
            r"^data.synthetic_per_class=\[3\]: give 2 counts, .* in train and test\.$",
        ),
        (
            ["experiment=image_signmnist", "data.synthetic_per_class=[3,0]"],
            r"^data.synthetic_per_class=\[3, 0\]: give each value >= 1\.$",
        ),
    ],
)
def test_a_run_setting_of_the_wrong_kind_or_range_is_named_before_any_work(
    overrides: list[str], message: str
) -> None:
    # Each of these ended in a TypeError or ValueError deep in data loading or training
    # (after a download when data.root was unset), with a traceback and no key named.
    with pytest.raises(ConfigError, match=message):
        assemble(compose_config(overrides))


def test_a_key_the_model_or_source_does_not_take_is_named_with_the_ones_it_does() -> None:
    # Hydra passed it on: "EgoGNN.__init__() got an unexpected keyword argument", a traceback
    with pytest.raises(ConfigError, match=r"^model\.dim: EgoGNN takes no 'dim'; it takes .*hidden"):
        assemble(compose_config(["experiment=node_wikics", "+model.dim=8"]))
    with pytest.raises(ConfigError, match=r"^data\.colour: .* takes no 'colour'; it takes "):
        assemble(compose_config(["+data.colour=red"]))


class RefusingSource(QTIMSource):
    """A data source whose constructor refuses its settings, in its own words."""

    def __init__(self, **settings: object) -> None:
        raise DataError("data.thing=1: give two.")


def test_a_source_refusing_its_settings_is_quoted_without_hydras_wrapping() -> None:
    cfg = compose_config([f"data._target_={__name__}.RefusingSource"])
    with pytest.raises(ConfigError) as err:
        assemble(cfg)
    assert str(err.value) == "data.thing=1: give two."  # not "Error in call to target ..."


@pytest.mark.parametrize(
    ("build", "override", "message"),
    [
        (monitor_config, "monitor.window=abc", r"monitor.window='abc': give a whole number"),
        (monitor_config, "monitor.interval_seconds=abc", r"interval_seconds='abc': give the"),
        (monitor_config, "monitor.alpha=abc", r"monitor.alpha='abc': give a number\."),
        (monitor_config, "monitor.min_captures=x", r"monitor.min_captures='x': give a whole"),
        (loadtest_config, "loadtest.duration_s=x", r"loadtest.duration_s='x': give a number"),
        (serve_config, "serve.capture=abc", r"serve.capture='abc': give true or false"),
        (serve_config, "serve.workers=true", r"serve.workers=True: give a whole number"),
        (serve_config, "workspace=5", r"workspace=5: give a folder path"),
        (assemble, "report_dir=5", r"report_dir=5: give a folder path"),
        # 'abc' served CORS to the origins 'a', 'b' and 'c'
        (serve_config, "serve.cors_origins=abc", r"cors_origins='abc': give a list of origins"),
        (serve_config, "serve.cors_origins=[1]", r"cors_origins=\[1\]: give a list of origins"),
        (build_registry, "registry.hooks=abc", r"registry.hooks='abc': give a list of hooks"),
        (build_registry, "registry.hooks=5", r"registry.hooks=5: give a list of hooks"),
        (sweep_config, "sweep.space=abc", r"sweep.space='abc': give a mapping of config keys"),
    ],
)
def test_a_command_setting_of_the_wrong_kind_or_range_is_named(
    build: Callable[[DictConfig], object], override: str, message: str
) -> None:
    # monitor.window=abc and monitor.interval_seconds=abc ended in a traceback; monitor.alpha
    # and loadtest.users read "'<' not supported between instances ..."; text budgets and
    # serve.capture=abc were taken as given, and report_dir=5 ended in a TypeError, as did
    # registry.hooks=abc and sweep.space=abc.
    with pytest.raises(ConfigError, match=message):
        build(compose_config([override]))


@pytest.mark.parametrize(
    ("build", "override", "message"),
    [
        (monitor_config, "monitor.alpha=2", r"monitor\.alpha=2: give the chance of a false alarm"),
        (monitor_config, "monitor.alpha=0", r"monitor\.alpha=0: give .* above 0 and below 1"),
        (monitor_config, "monitor.alpha=nan", r"monitor\.alpha=nan: give .* below 1; 0.05 is"),
        (
            monitor_config,
            "monitor.min_captures=1",
            r"monitor\.min_captures=1: give a whole .* >= 2",
        ),
        (monitor_config, "monitor.window=1", r"monitor\.window=1: give a whole number of captures"),
        (monitor_config, "~monitor.window", r"monitor\.window=None: give a whole number"),
        (monitor_config, "monitor.interval_seconds=-1", r"monitor\.interval_seconds=-1: give the"),
        (monitor_config, "+monitor.every=5", r"monitor\.every=5: the monitor group takes no"),
        (loadtest_config, "loadtest.p99_ms=0", r"loadtest\.p99_ms=0: give the largest 99th-perc"),
        (loadtest_config, "loadtest.max_error_rate=2", r"loadtest\.max_error_rate=2: give the "),
        (loadtest_config, "loadtest.min_rps=-1", r"loadtest\.min_rps=-1: give the fewest requests"),
        (loadtest_config, "loadtest.users=0", r"loadtest\.users=0: give the number of concurrent"),
        (loadtest_config, "loadtest.spawn_rate=0", r"loadtest\.spawn_rate=0: give the users sta"),
        (loadtest_config, "loadtest.spawn_rate=inf", r"loadtest\.spawn_rate=inf: give .* finite"),
        (loadtest_config, "loadtest.duration_s=-1", r"loadtest\.duration_s=-1: give the seconds"),
        (
            loadtest_config,
            "loadtest.duration_s=2.5",
            r"loadtest\.duration_s=2.5: .*; give 2 or 3\.$",
        ),
        (loadtest_config, "loadtest.duration_s=0.5", r"loadtest\.duration_s=0.5: .*; give 1\.$"),
        (loadtest_config, "+loadtest.rps=5", r"loadtest\.rps=5: the loadtest group takes no"),
    ],
)
def test_a_monitor_or_loadtest_value_refused_names_its_full_key_and_what_to_give(
    build: Callable[[DictConfig], object], override: str, message: str
) -> None:
    # They read "monitor config: alpha must be in (0, 1), got 2" and "loadtest config: users=0,
    # spawn_rate=10.0, duration=30.0: ...", not the key to set; ~monitor.window ended in a
    # KeyError traceback, spawn_rate=inf was taken, and an unknown key listed the keys of one
    # settings class only (not monitor.window, not loadtest.users).
    with pytest.raises(ConfigError, match=f"^{message}") as raised:
        build(compose_config([override]))
    assert "config:" not in str(raised.value)


def test_an_unknown_monitor_or_loadtest_key_lists_every_key_of_the_group() -> None:
    with pytest.raises(ConfigError) as monitor:
        monitor_config(compose_config(["+monitor.every=5"]))
    assert str(monitor.value).endswith("it takes alpha, interval_seconds, min_captures, window.")
    with pytest.raises(ConfigError) as loadtest:
        loadtest_config(compose_config(["+loadtest.rps=5"]))
    assert str(loadtest.value).endswith(
        "it takes duration_s, max_error_rate, min_rps, p99_ms, spawn_rate, users."
    )


def test_an_accelerator_the_machine_lacks_is_named_before_any_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Lightning raised MisconfigurationException("No supported gpu backend found!") once the
    # first fit started, after the data had loaded, with a traceback.
    from lightning.pytorch.accelerators import AcceleratorRegistry

    for name in ("cuda", "mps"):  # as on a machine without either, whatever this one has
        accelerator = AcceleratorRegistry[name]["accelerator"]
        monkeypatch.setattr(accelerator, "is_available", staticmethod(lambda: False))
    for asked in ("gpu", "cuda"):
        with pytest.raises(ConfigError, match=rf"trainer.accelerator={asked}: this machine has"):
            assemble(compose_config([f"trainer.accelerator={asked}"]))
    with pytest.raises(ConfigError, match=r"accelerator='abc': use one of auto, cpu, cuda, gpu"):
        assemble(compose_config(["trainer.accelerator=abc"]))
    assert assemble(compose_config(["trainer.accelerator=auto"])).trainer.accelerator == "auto"


def test_an_unknown_group_option_lists_the_options_not_hydras_search_path() -> None:
    for override, option in (("experiment=nosuch", "twins_graph"), ("logger=nosuch", "wandb")):
        with pytest.raises(ConfigError) as caught:
            compose_config([override])
        said = str(caught.value)
        assert f"Could not find '{override.replace('=', '/')}'" in said and option in said
        assert "search path" not in said and "pkg://" not in said


def test_a_fold_count_below_the_tasks_minimum_is_named_before_any_data_is_read(
    tmp_path: Path,
) -> None:
    absent = f"data.root={tmp_path / 'absent'}"  # loading would fail: nothing is read
    pairs = [("twins", "twins"), ("twins_graph", "twins"), ("twins_functional",) * 2]
    for experiment, task in pairs:
        with pytest.raises(ConfigError, match=rf"cv.n_folds=1: the {task} task needs at least 2"):
            assemble(compose_config([f"experiment={experiment}", absent, "cv.n_folds=1"]))
    image = assemble(compose_config(["experiment=image_rice", "cv.n_folds=1"]))
    assert image.pipeline.n_folds == 1  # one stratified holdout


def test_every_experiment_passes_the_kind_checks_as_shipped() -> None:
    for name in experiment_names():
        assert assemble(compose_config([f"experiment={name}"])).task.name
        # debug=tiny set model.dim, which the Wiki-CS model does not take (a traceback)
        assert assemble(compose_config([f"experiment={name}", "debug=tiny"])).task.name
    kinds = assemble(compose_config(["model.hidden=[64,32]", "trainer.limit_train_batches=3"]))
    assert kinds.trainer.limit_train_batches == 3  # a whole number of batches is a number too


def test_a_fold_count_the_families_cannot_fill_is_a_data_error(tiny_qtim: Path) -> None:
    a = assemble(compose_config([f"data.root={tiny_qtim}"]))
    data, _ = a.task.load()
    for n_folds in (1, 25):  # the tiny cohort has 24 families
        with pytest.raises(DataError, match=rf"cv.n_folds={n_folds}: give between 2 and .*\(24\)"):
            a.task.folds(data, n_folds, 42)


@pytest.mark.parametrize(
    ("experiment", "data", "reads", "given"),
    [
        ("node_wikics", "bcss", "WikiCSSource", "BCSSSource"),
        ("segmentation_bcss", "wikics", "BCSSSource", "WikiCSSource"),
        ("segmentation_bcss", "rice", "BCSSSource", "RiceSource"),
        ("image_rice", "wikics", "ImageSource", "WikiCSSource"),
        # twins started an 8 GB Kaggle download of BCSS before failing
        ("twins", "bcss", "QTIMSource or FunctionalSource", "BCSSSource"),
        ("twins_functional", "qtim", "FunctionalSource", "QTIMSource"),
    ],
)
def test_a_task_refuses_data_it_cannot_read_before_anything_loads(
    experiment: str, data: str, reads: str, given: str, workspace: Path
) -> None:
    # It failed with an AttributeError traceback once the data had loaded.
    with pytest.raises(
        ConfigError, match=rf"the \w+ task reads {reads} data, and the config gives {given}"
    ):
        assemble(compose_config([f"experiment={experiment}", f"data={data}"]))


@pytest.mark.parametrize(
    ("experiment", "model", "builds", "given"),
    [
        # a TypeError traceback once the data had loaded
        ("node_wikics", "monai_unet", "EgoGNN", "monai_unet"),
        ("segmentation_bcss", "ego_gnn", "monai_unet", "EgoGNN"),
        # "'num_classes'", a bare KeyError's words, as the whole error
        ("segmentation_bcss", "twins_mlp", "monai_unet", "MLPEncoder"),
        # "The U-Net cannot segment the data's 64×64 images ...; set data.image_size"
        ("segmentation_bcss", "timm", "monai_unet", "timm_backbone"),
        ("image_rice", "monai_unet", "timm_backbone", "monai_unet"),
    ],
)
def test_a_task_refuses_a_model_it_cannot_build_before_anything_loads(
    experiment: str, model: str, builds: str, given: str
) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"^model: the \w+ task builds {builds} models, and the config gives "
        rf"{given}\. Choose an experiment of the task",
    ):
        assemble(compose_config([f"experiment={experiment}", f"model={model}"]))


def test_an_outside_config_package_adds_its_groups_and_a_missing_one_is_said_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from example_task import PLUGIN, config_entry_points
    from modelcycle.config import config_packages, experiments_by_task, task_configs

    monkeypatch.syspath_prepend(str(PLUGIN))
    config_entry_points(monkeypatch, "blobs_plugin.conf", "no_such_package_xyz.conf")
    with caplog.at_level("WARNING", logger="modelcycle.config"):
        assert config_packages() == ["modelcycle.conf", "blobs_plugin.conf"]
        cfg = compose_config(["experiment=blobs"])
        compose_config(["task=blobs"])
    assert caplog.text.count("Config package no_such_package_xyz.conf (entry point p1") == 1
    assert dict(cfg.task) == {"name": "blobs", "rows": 240, "lr": 0.5}
    assert "data" not in cfg and "model" not in cfg and cfg.cv.n_folds == 3
    assert "blobs" in experiment_names() and "twins" in experiment_names()
    assert experiments_by_task()["blobs"] == ["blobs"]
    assert experiments_by_task()["twins"] == ["twins", "twins_graph"]
    assert task_configs()["blobs"] == "blobs" and task_configs()["twins"] == "twins"
    # the task takes no data or model: the default groups are neither built nor recorded
    composed = compose_config(["task=blobs"])
    assert "data" in composed and "model" in composed
    monkeypatch.setattr("modelcycle.tasks.base._REGISTRY", {})
    from example_task import load_example

    load_example(monkeypatch)
    run = assemble(composed)
    assert type(run.task).__name__ == "BlobsTask" and vars(run.task)["rows"] == 240
    assert "data" not in run.resolved and "model" not in run.resolved


@pytest.mark.parametrize(
    ("command", "given"),
    [
        ("train", "data=rice"),
        ("train", "model=twins_mlp"),
        ("config", "model=twins_mlp"),
        ("data", "data=rice"),
    ],
)
def test_a_group_given_for_a_task_that_takes_none_is_refused(
    command: str, given: str, monkeypatch: pytest.MonkeyPatch, workspace: Path
) -> None:
    # `train task=blobs data=rice` trained on the task's own points, and only logged that
    # the data group was not used.
    from typer.testing import CliRunner

    from example_task import PLUGIN, config_entry_points, load_example
    from modelcycle.cli import app

    monkeypatch.syspath_prepend(str(PLUGIN))
    config_entry_points(monkeypatch, "blobs_plugin.conf")
    load_example(monkeypatch)

    def train(*args: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("modelcycle.pipeline.run_pipeline", train)
    argv = {"train": ["train"], "config": ["config", "--check"], "data": ["data", "stats"]}
    runner = CliRunner()
    done = runner.invoke(app, [*argv[command], "task=blobs", given])
    said = " ".join(done.stdout.split())
    assert done.exit_code == 2, said
    group = given.lstrip("+").partition("=")[0]
    assert f"{given}: the blobs task" in said and f"takes no {group} group" in said
    assert f"Leave {given.lstrip('+')} out" in said
    # the base config's groups are dropped without a word, as is a group the user unsets
    for fine in (["task=blobs"], ["task=blobs", "~data"], ["experiment=blobs"]):
        shown = runner.invoke(app, ["config", "--check", *fine])
        assert shown.exit_code == 0, shown.stdout


@pytest.mark.parametrize(
    ("command", "given"),
    [
        ("train", ["task=blobs", "data.root=/x"]),
        ("config", ["task=blobs", "+data.folds=3"]),
        ("config", ["task=blobs", "data.nosuch=1"]),
        ("config", ["experiment=blobs", "model.hidden=8"]),  # the experiment drops the group
        ("config", ["experiment=blobs", "+model.hidden=8"]),
        ("data", ["task=blobs", "~data", "data.root=/x"]),
    ],
)
def test_a_key_of_a_group_the_task_does_not_take_is_refused(
    command: str, given: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `task=blobs data.root=/x` ran on the task's own data without a word about the key.
    from typer.testing import CliRunner

    from example_task import PLUGIN, config_entry_points, load_example
    from modelcycle.cli import app

    # an experiment of the task may set such keys itself: they are dropped with the group
    experiment = tmp_path / "keyed_conf" / "experiment" / "blobs_keyed.yaml"
    experiment.parent.mkdir(parents=True)
    (experiment.parents[1] / "__init__.py").touch()
    experiment.write_text(
        "# @package _global_\ndefaults:\n  - override /task: blobs\n"
        "data:\n  root: /elsewhere\nmodel:\n  hidden: [8]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN))
    config_entry_points(monkeypatch, "blobs_plugin.conf", "keyed_conf")
    load_example(monkeypatch)
    monkeypatch.setenv("MODELCYCLE_HOME", str(tmp_path / "ws"))

    def train(*args: object) -> None:
        raise AssertionError("training started")

    monkeypatch.setattr("modelcycle.pipeline.run_pipeline", train)
    argv = {"train": ["train"], "config": ["config", "--check"], "data": ["data", "stats"]}
    runner = CliRunner()
    done = runner.invoke(app, [*argv[command], *given])
    said = done.stdout.strip().splitlines()[-1]
    assert done.exit_code == 2, said
    key = given[-1]
    group = "data" if "data" in key else "model"
    assert said.startswith(f"error: {key}: the blobs task ")
    assert f"takes no {group} group. Leave {key.lstrip('+')} out" in said
    shown = runner.invoke(app, ["config", "--check", "experiment=blobs_keyed"])
    assert shown.exit_code == 0, shown.stdout
    assert runner.invoke(app, ["config", "--check", "data.root=/x"]).exit_code == 0


def test_choosing_a_task_by_task_name_is_refused_for_it_keeps_the_default_config() -> None:
    # `task.name=image` used to run the image task with the twins task's settings and data
    with pytest.raises(ConfigError) as caught:
        compose_config(["task.name=image"])
    said = str(caught.value)
    assert said.startswith("task.name=image: this renames the task") and "task=image" in said


def test_a_registered_task_without_a_config_says_how_a_package_ships_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata

    import modelcycle.tasks.base as base
    from example_task import load_example

    load_example(monkeypatch)  # installed, and no config package names its groups
    plugin = importlib.metadata.EntryPoint("blobs", "blobs_plugin.task:BlobsTask", "g")
    real = importlib.metadata.entry_points

    def entry_points(**kw: str) -> object:
        return [plugin] if kw.get("group") == base.ENTRY_POINT_GROUP else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(base, "entry_points", entry_points)
    for override in ("task=blobs", "experiment=blobs"):
        with pytest.raises(ConfigError) as caught:
            compose_config([override])
        said = str(caught.value)
        assert said.startswith(f"{override}: no {override.partition('=')[0]} config")
        assert "'modelcycle.configs' entry point" in said and "docs/add-a-task.md" in said
    with pytest.raises(ConfigError, match=r"task\.name=blobs: .* The blobs task is registered"):
        compose_config(["task.name=blobs"])


def test_a_task_that_builds_from_a_data_group_is_refused_a_config_without_one() -> None:
    with pytest.raises(ConfigError, match=r"^data: the twins task builds from a data group"):
        assemble(compose_config(["~data"]))
    with pytest.raises(ConfigError, match=r"^model: the twins task builds from a model group"):
        assemble(compose_config(["~model"]))


@pytest.mark.parametrize(
    ("command", "given", "names"),
    [
        ("config", "data=null", "rice"),
        ("config", "model=NULL", "twins_mlp"),
        ("train", "data=null", "qtim"),
        ("config", "trainer=null", "default"),
        ("config", "experiment=null", "twins_graph"),
    ],
)
def test_a_group_set_to_null_says_how_to_remove_or_choose_one(
    command: str, given: str, names: str, workspace: Path
) -> None:
    # It ended in Hydra's traceback: "Config group override must be a string or a list".
    from typer.testing import CliRunner

    from modelcycle.cli import app

    done = CliRunner().invoke(app, [command, given])
    said = done.stdout.strip()
    assert done.exit_code == 2, said
    assert len(said.splitlines()) == 1 and "Traceback" not in said
    group = given.partition("=")[0]
    assert said.startswith(f"error: {given}: a config group cannot be null")
    assert f"{group}=NAME chooses one: " in said and names in said
    removable = group in ("data", "model")
    assert (f"`~{group}` removes it" in said) is removable
    assert ("leave it out for none (the default)" in said) is (group == "experiment")
    # a key set to null is a value, not a group
    assert CliRunner().invoke(app, ["config", "report_dir=null"]).exit_code == 0


@pytest.mark.parametrize(
    ("command", "given"),
    [("config", "data=[]"), ("train", "data=[qtim,rice]"), ("config", "model=[twins_mlp]")],
)
def test_a_list_for_a_group_that_builds_one_object_is_refused(
    command: str, given: str, workspace: Path
) -> None:
    # Hydra merged the list: data=[] removed the group and data=[qtim,rice] read rice's
    # source with qtim's keys beside it, neither said.
    from typer.testing import CliRunner

    from modelcycle.cli import app

    done = CliRunner().invoke(app, [command, "experiment=twins", given])
    said = " ".join(done.stdout.split())
    group = given.partition("=")[0]
    assert done.exit_code == 2 and "Traceback" not in said, said
    assert said.startswith(f"error: {given}: a list merges several {group} configs into one")
    assert f"`~{group}` removes it" in said and f"{group}=NAME chooses one: " in said
    assert not (workspace / "data").exists()


@pytest.mark.parametrize(
    ("command", "given", "how"),
    [
        ("config", "+data=rice", "chosen by"),
        ("train", "+model=twins_graph", "chosen by"),
        ("config", "+experiment=twins_graph", "in"),
    ],
)
def test_a_group_added_with_plus_that_the_config_has_says_to_drop_the_plus(
    command: str, given: str, how: str, workspace: Path
) -> None:
    # Hydra said "Multiple values for data. To override a value use 'override data: rice'",
    # a line for a defaults list, not for the command line.
    from typer.testing import CliRunner

    from modelcycle.cli import app

    done = CliRunner().invoke(app, [command, given])
    said = done.stdout.strip()
    assert done.exit_code == 2, said
    group, plain = given.lstrip("+").partition("=")[0], given.lstrip("+")
    assert said == (
        f"error: {given}: {group} is already {how} the config, and + adds only a group it "
        f"lacks; {plain} (without +) changes it."
    )


@pytest.mark.parametrize("given", ["++data=rice", "++model=twins_graph"])
def test_a_group_forced_with_two_plus_says_to_choose_it_plainly(
    given: str, workspace: Path
) -> None:
    # Hydra said "force-add of config groups is not supported", naming no way to choose it.
    from typer.testing import CliRunner

    from modelcycle.cli import app

    done = CliRunner().invoke(app, ["config", given], terminal_width=300)
    assert done.exit_code == 2, done.stdout
    plain, group = given.lstrip("+"), given.lstrip("+").partition("=")[0]
    assert done.stdout.strip() == (
        f"error: {given}: ++ forces a key's value, and {group} is a config group; "
        f"{plain} (without ++) chooses it."
    )


@pytest.mark.parametrize(("removed", "key"), [("~data", "data.root=/x"), ("~model", "model.x=1")])
def test_a_key_of_a_group_removed_in_the_same_command_says_so(
    removed: str, key: str, workspace: Path
) -> None:
    # It read "data.root is not a key of the composed config", as if misspelt.
    with pytest.raises(ConfigError) as refused:
        compose_config([removed, key])
    path, group = key.partition("=")[0], removed[1:]
    assert str(refused.value) == (
        f"{path}: {removed} in the same command removes the {group} group, so it has no keys "
        f"to set; drop {removed} to set {path}, or drop {path}."
    )


class TwinsWithoutPlots(TwinsTask):
    """A task whose author left two methods of the contract out."""

    @abstractmethod
    def plot(self, *args: object) -> list[Path]: ...

    @abstractmethod
    def baseline(self, *args: object) -> base.Evaluation: ...


class TwinsWithABug(TwinsTask):
    """A task whose constructor raises a TypeError of its own."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lr = self.lr + "0"  # type: ignore[operator]


@pytest.mark.parametrize("task", [TwinsWithoutPlots, TwinsWithABug])
def test_a_task_class_at_fault_is_not_called_a_config_error(
    task: type[TwinsTask], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Any TypeError of the constructor read "task config: ... Valid keys: ...", a class left
    # abstract too: "task config: Can't instantiate abstract class ...".
    monkeypatch.setitem(base._REGISTRY, "at_fault", task)
    cfg = compose_config(["experiment=twins"])
    cfg.task.name = "at_fault"  # the twins settings, given to the class at fault
    if task is TwinsWithoutPlots:
        with pytest.raises(
            ConfigError, match=r"^The task class (tests\.)?test_config:TwinsWithoutPlots "
        ) as err:
            assemble(cfg)
        assert "does not implement baseline, plot of the task contract; add them" in str(err.value)
        assert "docs/add-a-task.md" in str(err.value) and "Valid keys" not in str(err.value)
    else:  # the bug as it is, where it is
        with pytest.raises(TypeError, match="unsupported operand type"):
            assemble(cfg)


def test_a_key_the_task_or_the_task_it_passes_keys_on_to_does_not_take_is_named() -> None:
    with pytest.raises(ConfigError, match=r"^task\.foo=1: TwinsTask takes no 'foo'; it takes "):
        assemble(compose_config(["experiment=twins", "+task.foo=1"]))
    # its **kwargs go on to TwinsTask's: the keys of both, not "kwargs"
    with pytest.raises(ConfigError, match=r"takes no 'foo'; it takes .*lr.*regress_covariates"):
        assemble(compose_config(["experiment=twins_functional", "+task.foo=1"]))


def test_a_serve_key_unknown_or_taken_out_is_named_with_the_whole_groups_keys() -> None:
    # an unknown key listed only ServeSettings' keys, leaving host, port, workers... out
    with pytest.raises(ConfigError) as caught:
        serve_config(compose_config(["+serve.foo=1"]))
    said = str(caught.value)
    assert said.startswith("serve.foo=1: the serve group takes no 'foo'; it takes ")
    assert all(key in said for key in ("host", "port", "workers", "max_batch", "variant"))
    # `~serve.host` ended in KeyError: 'host'
    with pytest.raises(ConfigError, match=r"^serve.host: the serve group has no host; give one"):
        serve_config(compose_config(["~serve.host"]))


WORKSPACE_COMMANDS = [
    ["train"],
    ["pipeline", "twins"],
    ["sweep"],
    ["register"],
    ["history", "twins"],
    ["export", "twins@champion"],
    ["serve", "twins@champion"],
    ["monitor", "twins@champion"],
    ["robustness", "twins@champion"],
    ["loadtest", "http://127.0.0.1:9"],
]


@pytest.mark.parametrize("command", WORKSPACE_COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize("under", [False, True], ids=["file", "under-a-file"])
def test_a_workspace_that_is_a_file_is_named_in_one_line(
    command: list[str], under: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every command ended in Python's "File exists" or "Not a directory", naming no setting.
    from typer.testing import CliRunner

    from modelcycle.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODELCYCLE_HOME", raising=False)
    (tmp_path / "notes").write_text("mine")
    given = "notes/ws" if under else "notes"
    result = CliRunner().invoke(app, [*command, f"workspace={given}"])
    said = " ".join(result.output.split())
    where = f"lies under {tmp_path / 'notes'}, a file" if under else "is a file"
    assert result.exit_code == 2, said
    assert f"workspace={given}: {tmp_path / given} {where}, not a folder; give workspace=" in said
    assert "Traceback" not in said and (tmp_path / "notes").read_text() == "mine"


def test_a_workspace_from_modelcycle_home_is_named_as_that(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from modelcycle.cli import app

    (tmp_path / "notes").write_text("mine")
    monkeypatch.setenv("MODELCYCLE_HOME", str(tmp_path / "notes"))
    said = " ".join(CliRunner().invoke(app, ["train"]).output.split())
    assert f"error: MODELCYCLE_HOME={tmp_path / 'notes'}: {tmp_path / 'notes'} is a file" in said
    assert "set MODELCYCLE_HOME to a folder (made if missing), or give workspace=FOLDER." in said
