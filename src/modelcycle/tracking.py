"""MLflow tracking in the workspace (SQLite by default), with optional W&B beside it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelcycle.ranks import is_rank_zero, rank_zero_only

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)

#: Ids of the runs this process has marked KILLED, oldest first: a command's Ctrl-C line
#: says runs were ended only when some were (`killed_runs`).
_killed: list[str] = []


@dataclass(frozen=True)
class TrackingSettings:
    """Where runs go.

    Attributes:
        uri: MLflow tracking URI; None means SQLite in the workspace.
        experiment: MLflow experiment name.
        wandb_project: Also log to W&B under this project (offline without WANDB_API_KEY).
    """

    uri: str | None = None
    experiment: str = "modelcycle"
    wandb_project: str | None = None


def tracking_server(uri: str) -> bool:
    """Whether `uri` is an MLflow tracking server (not a store this process opens itself).

    Runs tracked on a server keep their artifacts where the server says, so that another
    machine (the model server of a deployment) can load them; runs tracked in a store of
    this machine (SQLite, a folder, a database) keep them in the workspace.
    """
    return _scheme(uri) in {"http", "https", "databricks"}


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].lower()


class TrackingError(ValueError):
    """A tracking store that cannot be used; the message names it and what to do."""


#: Seconds a tracking server may take to answer its health check before it counts as down.
REACH_SECONDS = 10.0


def check_reachable(uri: str, seconds: float = REACH_SECONDS) -> None:
    """Raise `TrackingError` when `uri` is an MLflow server (http/https) nobody answers at.

    MLflow's client retries a request with backoff for about four minutes before it fails
    with a traceback; this asks the server's `/health` once. Any HTTP answer counts (a proxy
    asking for credentials too), and so does a certificate problem: MLflow reports those
    itself, with its own settings for them.
    """
    if _scheme(uri) not in {"http", "https"}:  # databricks has no /health
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=seconds)
    except requests.exceptions.SSLError:
        return
    except (requests.ConnectionError, requests.Timeout) as err:
        why = "no answer" if isinstance(err, requests.Timeout) else _first_reason(err)
        raise TrackingError(
            f"logger.uri={uri}: no MLflow tracking server answers there ({why}). Start it "
            "(`mlflow server --host 0.0.0.0 --port 5000 ...`), correct the address, or leave "
            "logger.uri unset to track in the workspace."
        ) from err


def _first_reason(err: BaseException) -> str:
    """What failed underneath requests' wrapping.

    For example `Failed to establish a new connection: [Errno 111] Connection refused`.
    """
    reason = getattr(err.args[0], "reason", None) if err.args else None
    text = str(reason if reason is not None else err)
    return text.split(": ", 1)[-1] if reason is not None else text


def browse_runs(uri: str) -> str:
    """How to look at the runs tracked at `uri`: the server's page, or `mlflow ui` on it."""
    if tracking_server(uri):
        return f"open {uri}"
    return f"`mlflow ui --backend-store-uri {uri}`"


def workspace_store(workspace: Path) -> Path:
    """The SQLite file that tracks runs and the registry when no URI is configured."""
    return workspace / "mlflow.db"


def tracking_uri(settings: TrackingSettings, workspace: Path) -> str:
    """The MLflow URI: the configured one, else SQLite in the workspace."""
    return settings.uri or f"sqlite:///{workspace_store(workspace)}"


class Tracker:
    """One parent run per pipeline, one nested run per fold.

    Only global rank zero of a multi-process (DDP) run tracks: on the other ranks the
    tracking store is never touched, runs are empty ids and logging does nothing.
    """

    def __init__(self, settings: TrackingSettings, workspace: Path) -> None:
        self.workspace = workspace
        self.uri = tracking_uri(settings, workspace)
        self.settings = settings
        self.experiment_id = self._experiment_id() if is_rank_zero() else ""

    def _experiment_id(self) -> str:
        check_reachable(self.uri)
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        # Processes starting together on one workspace (sweep workers) would race to create
        # the SQLite schema and the experiment; the first creates them, the others wait.
        with workspace_lock(self.workspace):
            experiment = mlflow.get_experiment_by_name(self.settings.experiment)
            if experiment is None:
                artifacts = None  # a tracking server's own store (--serve-artifacts, S3 ...)
                if not tracking_server(self.uri):
                    artifacts = (self.workspace / "artifacts").resolve().as_uri()
                return str(mlflow.create_experiment(self.settings.experiment, artifacts))
            location = str(experiment.artifact_location)
            self._warn_if_elsewhere(location)
            if tracking_server(self.uri) and location.startswith("file:"):
                log.warning(
                    "Experiment %r on %s keeps its artifacts in %s, a folder of one "
                    "machine: a server elsewhere cannot load the models it registers. To "
                    "store them with the tracking server, name a new experiment "
                    "(logger.experiment=NAME).",
                    self.settings.experiment,
                    self.uri,
                    location,
                )
            return str(experiment.experiment_id)

    def _warn_if_elsewhere(self, location: str) -> None:
        """Warn when the workspace's own store keeps its artifacts outside the workspace.

        The store records the folder as an absolute path when the experiment is made: in a
        workspace moved or copied since, every run's files (reports, models) went to the old
        place, silently made again if it had gone, and a cleanup of the old copy deleted the
        registered models of the new one.
        """
        if self.settings.uri is not None or not location.startswith("file:"):
            return  # a store or artifact location chosen by the user
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        own = (self.workspace / "artifacts").resolve()
        folder = Path(url2pathname(urlparse(location).path))  # as_uri() quoted it ("%20")
        if folder != own and own not in folder.parents:
            log.warning(
                "Experiment %r of %s keeps its run files in %s, outside this workspace "
                "(moved or copied from there?): this run's files go there too, and "
                "registered versions are read from there. `modelcycle relocate` (with the "
                "same workspace=) rewrites the stored paths so that they go to %s; or name a "
                "new experiment (logger.experiment=NAME), or move the workspace back.",
                self.settings.experiment,
                workspace_store(self.workspace),
                folder,
                own,
            )

    @contextmanager
    def run(self, name: str, nested: bool = False) -> Iterator[str]:
        """Start (and end) an MLflow run; yields its id ("" off rank zero)."""
        import mlflow

        if not is_rank_zero():
            yield ""
            return

        with mlflow.start_run(
            experiment_id=self.experiment_id, run_name=name, nested=nested
        ) as active:
            try:
                yield active.info.run_id
            except KeyboardInterrupt:
                _end_killed(active.info.run_id)  # stopped by the user, not failed
                raise

    @contextmanager
    def resume(self, run_id: str, nested: bool = False) -> Iterator[str]:
        """Reopen a finished run to log more to it (and end it again); yields its id."""
        import mlflow

        with mlflow.start_run(run_id=run_id, nested=nested):
            try:
                yield run_id
            except KeyboardInterrupt:
                _end_killed(run_id)  # as `run` ends an interrupted run
                raise

    def children(self, run_id: str) -> dict[str, str]:
        """Name → id of the runs nested in `run_id` (a pipeline run's folds and final fit)."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_run(run_id).info.experiment_id
        nested = client.search_runs(
            [experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )
        return {str(r.info.run_name): str(r.info.run_id) for r in nested}

    @rank_zero_only
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flattened parameters (values longer than MLflow's limit are cut)."""
        import mlflow

        mlflow.log_params({k: str(v)[:6000] for k, v in flatten(params).items()})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics of the active run."""
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    @rank_zero_only
    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        """Attach files to the active run."""
        import mlflow

        for path in paths:
            mlflow.log_artifact(str(path), artifact_path=folder)

    @rank_zero_only
    def log_directory(self, directory: Path, folder: str) -> None:
        """Attach a whole directory to the active run under `folder`."""
        import mlflow

        mlflow.log_artifacts(str(directory), artifact_path=folder)

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Tag the active run."""
        import mlflow

        mlflow.set_tags(dict(tags))

    def lightning_loggers(self, run_id: str, fold_name: str, group: str) -> list[Logger]:
        """Loggers that send Lightning's per-epoch metrics to this run (and W&B if set).

        None off rank zero: building an MLflow logger opens (and may migrate) the store.
        """
        from lightning.pytorch.loggers import MLFlowLogger

        if not is_rank_zero():
            return []

        loggers: list[Logger] = [MLFlowLogger(tracking_uri=self.uri, run_id=run_id)]
        if self.settings.wandb_project:
            loggers.append(self._wandb(fold_name, group))
        return loggers

    def _wandb(self, name: str, group: str) -> Logger:
        from lightning.pytorch.loggers import WandbLogger

        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        save_dir = self.workspace / "wandb"
        save_dir.mkdir(parents=True, exist_ok=True)
        return WandbLogger(
            project=self.settings.wandb_project,
            name=name,
            group=group,
            mode=mode,
            save_dir=str(save_dir),
        )

    @staticmethod
    def finish_loggers(loggers: list[Logger]) -> None:
        """Close loggers that hold a run open (W&B)."""
        for logger in loggers:
            experiment = getattr(logger, "_experiment", None)
            if experiment is not None and hasattr(experiment, "finish"):
                experiment.finish()


@contextmanager
def workspace_lock(workspace: Path) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (a lock file in it) across processes."""
    import fcntl

    workspace.mkdir(parents=True, exist_ok=True)
    with (workspace / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys; lists as JSON text (as MLflow parameters hold them)."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else value
    return flat


def git_state(path: Path) -> dict[str, str]:
    """Git SHA, dirty flag and top folder of the checkout holding `path`.

    All three are "unknown" outside git: a state nobody can read is not "clean".
    """
    sha = _git(path, "rev-parse", "HEAD")
    if not sha:
        return {"git_sha": "unknown", "git_dirty": "unknown", "git_root": "unknown"}
    dirty = str(bool(_git(path, "status", "--porcelain")))
    return {
        "git_sha": sha,
        "git_dirty": dirty,
        "git_root": _git(path, "rev-parse", "--show-toplevel"),
    }


def code_state() -> dict[str, str]:
    """`git_state` of the code that runs.

    The modelcycle checkout this package was imported from, when it is one (a clone with an
    editable install); else the working folder's (a project using an installed modelcycle,
    its configs and tasks). The working folder alone once recorded an unrelated repository
    a training happened to start in.
    """
    package = Path(__file__).resolve().parent
    if _git(package, "ls-files", "--error-unmatch", "__init__.py"):  # tracked: a checkout
        return git_state(package)
    return git_state(Path.cwd())


def _git(path: Path, *args: str) -> str:
    """What `git ARGS` prints in `path`, or "" when it fails (no git, not a checkout)."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=path, capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


LINEAGE_PACKAGES = ("modelcycle", "torch", "lightning", "numpy", "pandas", "scikit-learn", "mlflow")


def package_versions(names: tuple[str, ...] = LINEAGE_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages a model's behaviour depends on."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def task_packages(task_cls: type) -> tuple[str, ...]:
    """The installed distributions holding a task class, other than modelcycle.

    A task from another package (a `modelcycle.tasks` entry point) is that package's code,
    which modelcycle's git SHA does not describe: its version goes to the lineage too.
    """
    from importlib.metadata import packages_distributions

    top = task_cls.__module__.partition(".")[0]
    return tuple(d for d in packages_distributions().get(top, []) if d not in LINEAGE_PACKAGES)


def package_checkouts(names: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """The git commit each distribution's code came from, by name, where pip recorded one.

    A plugin installed editable from its clone (`pip install -e .`) runs that checkout's
    code, which its version number does not describe: its `git_state`, with `editable`
    saying whether the checkout is the code that runs ("True"), or the folder a copy was
    installed from ("False"). A plugin installed from a git URL (`pip install
    git+https://...@main`) gets the commit pip checked out (`git_sha`), clean by
    construction, and the URL (`git_url`). Distributions from an index, an archive or a
    folder outside git are left out.
    """
    found = {}
    for name in names:
        said = _direct_url(name)
        vcs = said.get("vcs_info")
        if isinstance(vcs, dict) and vcs.get("vcs") == "git" and vcs.get("commit_id"):
            found[name] = {
                "git_sha": str(vcs["commit_id"]),
                "git_dirty": "False",
                "git_url": str(said.get("url", "")),
                "editable": "False",
            }
            continue
        source = _installed_from(said)
        if source is None:
            continue
        folder, editable = source
        state = git_state(folder)
        if state["git_sha"] != "unknown":
            found[name] = {**state, "editable": str(editable)}
    return found


def _direct_url(name: str) -> dict[str, Any]:
    """A distribution's PEP 610 `direct_url.json` (where pip installed it from); {} if none."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        said = json.loads(distribution(name).read_text("direct_url.json") or "{}")
    except (PackageNotFoundError, ValueError):
        return {}
    return said if isinstance(said, dict) else {}


def _installed_from(said: dict[str, Any]) -> tuple[Path, bool] | None:
    """The local folder a `direct_url.json` names and whether editable; or None.

    (`{"url": "file:///...", "dir_info": {"editable": true}}`).
    """
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    url = urlparse(str(said.get("url", "")))
    if url.scheme != "file" or not isinstance(said.get("dir_info"), dict):
        return None  # an index, a VCS URL or an archive: no folder to read
    folder = Path(url2pathname(url.path))
    return (folder, said["dir_info"].get("editable") is True) if folder.is_dir() else None


def _end_killed(run_id: str) -> None:
    """End the active run as KILLED; a store that cannot take the write is said, not raised.

    The store may be locked by another process for longer than MLflow waits (a sweep's
    other workers): the interruption must still reach the user as itself.
    """
    import mlflow

    # MLflow logs a failed write with its traceback before raising it; the warning says it.
    store_log = logging.getLogger("mlflow.store.db.utils")
    quiet = store_log.disabled
    store_log.disabled = True
    try:
        mlflow.end_run("KILLED")  # leaves the active-run stack even when the write fails
    except Exception as err:
        log.warning(
            "Run %s could not be marked KILLED (%s); the tracking store shows it RUNNING.",
            run_id,
            str(err).splitlines()[0][:200],
        )
    else:
        _killed.append(run_id)
    finally:
        store_log.disabled = quiet


def killed_runs() -> list[str]:
    """Ids of the runs this process has marked KILLED at a Ctrl-C, oldest first."""
    return list(_killed)
