"""The model registry (MLflow): versions with lineage, a promotion gate, aliases and audit.

A version is registered from a pipeline run's `model/` artifact. Its tags carry the lineage:
git SHA and dirty flag, data hash, package versions, the resolved config, every
cross-validated metric of the model and of the baseline, and where the drift reference
sample and the held-out sample live. Every alias move is appended to the registered model's
audit trail (tags `audit.<ns>-<random>`, so it lives wherever the registry lives) and runs the
configured hooks.
"""

from __future__ import annotations

import getpass
import json
import logging
import re
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelcycle.data.atomic import replacing
from modelcycle.registry_hooks import AliasMoved, Hook, HookResult, run_hooks

#: Marks a complete local copy of a version, in its folder (`Registry.download`).
COPY_MARKER = ".complete.json"

log = logging.getLogger(__name__)

AUDIT_PREFIX = "audit."
CHAMPION = "champion"
CHALLENGER = "challenger"
_ALIAS = re.compile(r"[\w-]{1,255}")  # MLflow's rule for alias names
#: The characters a new model name may hold. A name goes as it is into URL paths
#: (/v1/models/NAME/predict), the commands modelcycle prints, folder names and metric labels.
NAME_RULE = "1-255 letters, digits, '.', '_' or '-', the first a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
#: What a run id is and where to find one, for every "no such run" message.
HOW_TO_FIND = (
    "RUN is the id `modelcycle train` prints (`MLflow run ...`), its report folder "
    "(`Report and plots: ...`), or `latest`; browse runs with {browse}"
)


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says why and what to do."""


class GateError(RegistryError):
    """The candidate does not beat what it has to beat; the message gives both numbers."""


@dataclass(frozen=True)
class Candidate:
    """What the gate compares: a run's metric beside its baseline's, on the same folds."""

    run_id: str
    metric: str
    value: float
    baseline: float


@dataclass(frozen=True)
class Registered:
    """A version as it stands: name, version, where its files are, and its lineage tags."""

    name: str
    version: str
    source: str
    run_id: str
    tags: dict[str, str]
    registered_at: float = 0.0  # unix seconds (0: not read)


class StoreWatch:
    """Whether a local SQLite registry may have changed since a key last asked.

    A served alias is looked up every `serve.reload_seconds`; through MLflow that costs about
    18 ms of CPU, most of an idle server's work besides its clock. Any write to a SQLite
    store (an alias move from any process) changes the size or modification time of the
    database or of its journal or write-ahead log, so while none of them changed the alias
    cannot have moved. On a file system whose times are coarse (whole seconds), two writes
    within one second could leave the same stamp; every `refresh_seconds` the answer is yes
    regardless. A store that is not a local SQLite file (an MLflow server, another
    database) always may have changed.

    Args:
        uri: The tracking and registry URI.
        refresh_seconds: Longest time a key hears "no" in a row.
        clock: Seconds, monotonic (for tests).
    """

    def __init__(
        self,
        uri: str,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        suffixes = ("", "-wal", "-journal")
        self.files = [Path(f"{path}{s}") for s in suffixes] if path else []
        self.refresh_seconds, self.clock = refresh_seconds, clock
        self._seen: dict[str, tuple[tuple[tuple[int, ...] | None, ...], float]] = {}

    def may_have_changed(self, key: str) -> bool:
        """True the first time, after any write since `key` last heard True, or on refresh."""
        if not self.files:
            return True
        stamp, now = tuple(map(self._stamp, self.files)), self.clock()
        seen = self._seen.get(key)
        if seen is not None and seen[0] == stamp and now - seen[1] < self.refresh_seconds:
            return False
        self._seen[key] = (stamp, now)  # taken before the caller looks: a later write shows
        return True

    def forget(self, key: str) -> None:
        """Answer True the next time `key` asks (what it looked for is not done yet)."""
        self._seen.pop(key, None)

    @staticmethod
    def _stamp(path: Path) -> tuple[int, ...] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)


class Registry:
    """Register, promote and audit model versions in an MLflow registry.

    Args:
        tracking_uri: The MLflow store (SQLite in the workspace by default, or a server).
        hooks: Run on every alias move; a failing hook is reported, never fatal.
    """

    def __init__(self, tracking_uri: str, hooks: Sequence[Hook] = ()) -> None:
        from mlflow import MlflowClient

        from modelcycle.tracking import check_reachable

        check_reachable(tracking_uri)  # a server that is down: one line now, not in 4 minutes
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.hooks = list(hooks)

    def candidate(self, run_id: str) -> Candidate:
        """The gate's view of a pipeline run: its primary metric, model and baseline means."""
        run = self._run(run_id)
        metric = run.data.tags.get("primary_metric")
        if metric is None or f"model_{metric}_mean" not in run.data.metrics:
            raise RegistryError(
                f"Run {run_id} is not a finished pipeline run (no primary metric); register the "
                "parent run printed by `modelcycle pipeline`."
            )
        m = run.data.metrics
        return Candidate(run_id, metric, m[f"model_{metric}_mean"], m[f"baseline_{metric}_mean"])

    def task_of(self, run_id: str) -> str:
        """The registered-model name of a pipeline run (its task's `model_name`, else the task)."""
        tags = self._run(run_id).data.tags
        task = tags.get("model_name") or tags.get("task")
        if not task:  # "pass --name" sent the user on to "not a finished pipeline run"
            parent = tags.get("mlflow.parentRunId")
            raise RegistryError(
                f"Run {run_id} is a fold or trial of run {parent}; register that one."
                if parent
                else f"Run {run_id} is not a run of `modelcycle train` or `pipeline` (no task "
                "tag); register the run one of them printed."
            )
        return str(task)

    def register(
        self, run_id: str, name: str, alias: str = CHALLENGER, reason: str = "registered"
    ) -> tuple[Registered, list[HookResult]]:
        """Create a version from the run's `model/` artifact if it passes the gate.

        The gate: the model's cross-validated primary metric must beat the baseline's on the
        same folds, and the current champion's when there is one.

        Raises:
            GateError: With both numbers, when it does not; nothing is registered then.
        """
        check_new_name(name)
        check_alias(alias)
        candidate = self.candidate(run_id)
        self._once(run_id, name)
        self._same_kind(run_id, name)
        run = self._run(run_id)
        verdict = self._gate(candidate, name, run)
        if not self._has_model(run_id):
            raise RegistryError(f"Run {run_id} has no model/ artifact to register.")
        if not self._exists(name):
            self.client.create_registered_model(
                name, description=f"modelcycle task {run.data.tags.get('task')}"
            )
        version = self.client.create_model_version(
            name,
            source=f"{run.info.artifact_uri}/model",
            run_id=run_id,
            tags=_lineage(run, candidate, self._config_text(run.info.run_id))
            | {"gate.champion": verdict},
            description=f"{candidate.metric} {candidate.value:.4f} "
            f"(baseline {candidate.baseline:.4f})",
        )
        results = self.move_alias(name, alias, str(version.version), reason)
        return self.get(name, str(version.version)), results

    def move_alias(self, name: str, alias: str, version: str, reason: str) -> list[HookResult]:
        """Point `alias` at `version`, append the move to the audit trail, run the hooks."""
        check_alias(alias)
        self.get(name, version)  # a missing version is an error before anything moves
        with self._moving():
            previous = self.alias_version(name, alias)
            self.client.set_registered_model_alias(name, alias, version)
            event = AliasMoved(
                model=name,
                alias=alias,
                version=version,
                previous_version=previous,
                reason=reason,
                actor=_actor(),
                at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            self._append_audit(event)
        log.info("%s@%s: %s → %s (%s)", name, alias, previous, version, reason)
        return run_hooks(self.hooks, event)

    def _moving(self) -> AbstractContextManager[None]:
        """Hold the workspace's lock while an alias is read, moved and audited.

        Two registrations at once (two `pipeline` runs on one workspace) both read the
        challenger before either moved it, and both audit entries said "from 1". Only a
        SQLite registry has a workspace to lock; a server's writes are its own.
        """
        from modelcycle.tracking import workspace_lock

        if not self.uri.startswith("sqlite:///"):
            return nullcontext()
        return workspace_lock(Path(self.uri.removeprefix("sqlite:///")).parent)

    def promote(
        self, name: str, alias: str = CHAMPION, version: str | None = None, reason: str = ""
    ) -> list[HookResult] | None:
        """Move `alias` (default champion) to `version` (default: the current challenger).

        Returns:
            The hooks' results; None when `alias` already points at that version, in which
            case nothing is moved, audited or announced to the hooks.
        """
        # "01" is version 1 to MLflow: compare and record the version as it writes it
        target = (
            self.get(name, version).version if version else self.alias_version(name, CHALLENGER)
        )
        if target is None:
            raise RegistryError(
                f"{name} has no {CHALLENGER} to promote; pass --version or register a run first."
            )
        if self.alias_version(name, alias) == str(target):
            log.debug("%s@%s is already version %s: nothing moved", name, alias, target)
            return None
        return self.move_alias(name, alias, target, reason or f"promoted to {alias}")

    def history(self, name: str) -> list[AliasMoved]:
        """Every alias move of `name`, oldest first."""
        tags = self._model(name).tags
        entries = sorted((k, v) for k, v in tags.items() if k.startswith(AUDIT_PREFIX))
        return [AliasMoved(**json.loads(value)) for _, value in entries]

    def get(self, name: str, version: str) -> Registered:
        """One version with its tags."""
        from mlflow.exceptions import MlflowException

        try:
            v = self.client.get_model_version(name, version)
        except MlflowException as err:
            found = sorted(int(v.version) for v in self._versions(name))
            have = (
                f"its versions are {', '.join(map(str, found))}"
                if found
                else "it has no versions (or no such model)"
            )
            raise RegistryError(
                f"{name} has no version {version!r}: {have}; `modelcycle history {name}` "
                "shows what each is."
            ) from err
        return _registered(v)

    def models(self) -> list[str]:
        """The names of every registered model, sorted."""
        found, token = [], None
        while True:
            page = self.client.search_registered_models(max_results=100, page_token=token)
            found += [m.name for m in page]
            token = page.token
            if not token:
                return sorted(found)

    def versions(self, name: str) -> list[Registered]:
        """Every version of `name`, newest first (RegistryError, naming the models, if none)."""
        self._model(name)
        found = [_registered(v) for v in self._versions(name)]
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def resolve(self, reference: str) -> Registered:
        """A version from `NAME@ALIAS` or `NAME/VERSION`."""
        separator = "@" if "@" in reference else "/" if "/" in reference else None
        if separator is not None and not all(reference.split(separator, 1)):
            raise RegistryError(  # else MLflow's "Missing value for required parameter 'name'"
                f"{reference!r}: write both parts, NAME@ALIAS (e.g. twins@champion) or "
                "NAME/VERSION (e.g. twins/3)."
            )
        if "@" in reference:
            name, alias = reference.split("@", 1)
            aliases = self.aliases(name)
            if alias not in aliases:
                held = ", ".join(f"@{a} (version {v})" for a, v in sorted(aliases.items()))
                numbered = f" Version {alias}? Write {name}/{alias}." if alias.isdigit() else ""
                raise RegistryError(
                    f"{name} has no alias {alias!r}; it has {held or 'none yet'} (moves: "
                    f"`modelcycle history {name}`).{numbered}"
                )
            return self.get(name, aliases[alias])
        if "/" in reference:
            name, version = reference.rsplit("/", 1)
            return self.get(name, version)
        raise RegistryError(
            f"{reference!r}: write NAME@ALIAS (e.g. twins@champion) or NAME/VERSION."
        )

    def download(self, registered: Registered, dst: Path, fresh: bool = False) -> Path:
        """Copy a version's model directory to `dst` once and return the local path.

        With `fresh`, a complete copy is replaced too (one that was changed on disk).

        Processes that share `dst` (the workers of one server start together) take turns
        under a lock on it, and a copy already complete for the same source and tags is
        reused: downloading again would rewrite files another process may be reading (a
        worker once failed its start on a half-rewritten held_out.npz). New tags (a new
        export) download again. The marker of a complete copy is written whole (a kill while
        writing it left JSON cut short, which ended every later start); one that cannot be
        read counts as absent, and the copy is made again.
        """
        import mlflow.artifacts
        from mlflow.exceptions import MlflowException

        from modelcycle.tracking import workspace_lock

        stamp = json.dumps({"source": registered.source, "tags": registered.tags}, sort_keys=True)
        marker = dst / COPY_MARKER
        with workspace_lock(dst):
            if marker.is_file():
                done = _complete_copy(marker)
                if not fresh and done.get("stamp") == stamp and Path(done["path"]).exists():
                    return Path(done["path"])
                marker.unlink()
            try:
                path = Path(
                    mlflow.artifacts.download_artifacts(  # mlflow-artifacts: needs the server
                        artifact_uri=registered.source, dst_path=str(dst), tracking_uri=self.uri
                    )
                )
            except (MlflowException, OSError) as err:
                raise self._files_gone(registered, err) from err
            with replacing(marker) as written:
                written.write_text(json.dumps({"stamp": stamp, "path": str(path)}))
        return path

    def _files_gone(self, registered: Registered, err: Exception) -> RegistryError:
        """Why a version's files cannot be copied, and what to do about it.

        MLflow's own error was a traceback listing "No such artifact: 'model'" for a folder
        deleted from the workspace's artifacts, by hand or by a cleanup.
        """
        name, version = registered.name, registered.version
        lines = [line for line in str(getattr(err, "message", err)).splitlines() if line]
        reason = lines[-1].strip()[:200] if lines else type(err).__name__
        if (moved := self._moved_from()) is not None:
            return RegistryError(
                f"{name} version {version}: its model files cannot be read from "
                f"{registered.source} ({reason}). This workspace was made in {moved} and "
                "its store still names files there: `modelcycle relocate` (with the same "
                "workspace=) rewrites them to where it is now."
            )
        return RegistryError(
            f"{name} version {version}: its model files cannot be read from "
            f"{registered.source} ({reason}). They were deleted or moved, or their store "
            "cannot be reached: put the folder back there, point the alias at another "
            f"version (`modelcycle promote {name} --version N`; `modelcycle history {name}` "
            "lists them), or train a new version (`modelcycle train`, then `modelcycle release`)."
        )

    def _moved_from(self) -> Path | None:
        """The folder this registry's workspace was made in, if it has moved since."""
        from modelcycle.relocation import RelocationError, former_folder

        if not self.uri.startswith("sqlite:///"):
            return None
        try:
            return former_folder(Path(self.uri.removeprefix("sqlite:///")))
        except (RelocationError, OSError, sqlite3.Error):
            return None

    def _config_text(self, run_id: str) -> str:
        """The run's resolved config.yaml, its first 5,000 characters (tags are bounded)."""
        try:
            with tempfile.TemporaryDirectory() as folder:
                path = self.client.download_artifacts(run_id, "config.yaml", folder)
                return Path(path).read_text()[:5000]
        except Exception as err:  # lineage must not block registration
            return f"unavailable: {err}"

    def log_directory(self, registered: Registered, directory: Path, folder: str) -> None:
        """Add files to a version's run, under `folder` (e.g. model/onnx)."""
        self.client.log_artifacts(registered.run_id, str(directory), artifact_path=folder)

    def set_tags(self, registered: Registered, tags: dict[str, str]) -> None:
        """Attach more facts (e.g. export results) to a version."""
        for key, value in tags.items():
            self.client.set_model_version_tag(registered.name, registered.version, key, value)

    def delete_tags(self, registered: Registered, keys: Iterable[str]) -> None:
        """Take tags off a version (e.g. an earlier export's that no longer hold)."""
        for key in keys:
            self.client.delete_model_version_tag(registered.name, registered.version, key)

    def version_of(self, run_id: str, name: str) -> tuple[Registered, list[str]] | None:
        """The version of `name` made from `run_id`, with the aliases it holds; None if none."""
        if not self._exists(name):
            return None
        # by run id alone (MLflow's hex ids need no quoting); the name is compared here
        found = [
            v for v in self.client.search_model_versions(f"run_id = '{run_id}'") if v.name == name
        ]
        if not found:
            return None
        version = str(found[0].version)
        aliases = sorted(a for a, v in self.aliases(name).items() if v == version)
        return self.get(name, version), aliases

    def _once(self, run_id: str, name: str) -> None:
        """Refuse a run that is already a version of `name`: it would be registered twice."""
        if (found := self.version_of(run_id, name)) is not None:
            version, aliases = found
            held = f" (@{', @'.join(aliases)})" if aliases else ""
            raise GateError(
                f"Not registered: run {run_id} is already {name} version {version.version}{held}."
            )

    def _versions(self, name: str) -> list[Any]:
        """Every version of the registered model `name` (none when there is no such model)."""
        query = f"name = '{name}'" if "'" not in name else ""  # a quote: filter here instead
        return [v for v in self.client.search_model_versions(query) if v.name == name]

    def _same_kind(self, run_id: str, name: str) -> None:
        """Refuse a run that predicts something else than `name`'s versions do.

        The gate compares scores only: a sign-language run outscores a rice model, and was
        registered and promoted as one. A version records what its run predicts
        (`lineage.model_name`; before that was recorded, its task).
        """
        if not self._exists(name):
            return  # a new lineage, under a name of the user's choosing
        tags = self._run(run_id).data.tags
        predicts, task = tags.get("model_name") or tags.get("task", ""), tags.get("task", "")
        for version in self._versions(name):
            theirs = version.tags.get("lineage.model_name")
            mine = predicts if theirs is not None else task
            theirs = theirs if theirs is not None else version.tags.get("lineage.task", "")
            if theirs and mine != theirs:
                raise RegistryError(
                    f"Run {run_id} predicts {mine}, and {name} version {version.version} "
                    f"predicts {theirs}: a version of {name} must be a run of the same kind. "
                    f"Register it under its own name (the default: {predicts}), or name a run "
                    f"of {theirs}."
                )

    def _gate(self, candidate: Candidate, name: str, run: Any) -> str:
        """Refuse a run that does not beat its baseline, or a comparable champion.

        Returns:
            What the champion comparison found, for the version's `gate.champion` tag.
        """
        m = candidate.metric
        if not candidate.value > candidate.baseline:
            raise GateError(
                f"Not registered: {m} {candidate.value:.4f} does not beat the baseline's "
                f"{candidate.baseline:.4f} on the same folds."
            )
        champion = self.alias_version(name, CHAMPION) if self._exists(name) else None
        if champion is None:
            return "none: no champion yet"
        held = self.get(name, champion)
        differences = _protocol_differences(self._champion_protocol(held), _protocol(run))
        if held.tags.get("gate.metric", m) != m:
            differences.append(f"its gate metric is {held.tags['gate.metric']}, this run's {m}")
        if differences:
            # Means over other folds, data or metric differ by their splits as much as by
            # their models: the baseline (same folds) still gates, a person promotes.
            otherwise = "; ".join(differences)
            return f"not compared: version {champion} was scored otherwise ({otherwise})"
        best = float(held.tags.get(f"metric.model_{m}_mean", "nan"))
        if not candidate.value > best:
            raise GateError(
                f"Not registered: {m} {candidate.value:.4f} does not beat the champion "
                f"({name} version {champion}) at {best:.4f}."
            )
        return f"beat version {champion} ({m} {candidate.value:.4f} against {best:.4f})"

    def _champion_protocol(self, held: Registered) -> dict[str, str]:
        """`_protocol` of a version's run, or its lineage's data hash when the run is gone."""
        from mlflow.exceptions import MlflowException

        try:
            return _protocol(self.client.get_run(held.run_id))
        except MlflowException:
            data = held.tags.get("lineage.data_hash", "")
            return {"data": data} if data else {}

    def _append_audit(self, event: AliasMoved) -> None:
        """Add the move under a key no other move has, read nothing first.

        Keys were the count of entries so far: two promotes at once counted alike and one
        entry overwrote the other, as did every move after an entry was deleted. Now the
        clock (ns, which sorts after the old six-digit keys) and a random suffix.
        """
        key = f"{AUDIT_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        self.client.set_registered_model_tag(event.model, key, json.dumps(event.payload()))

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None."""
        return self.aliases(name).get(alias)

    def aliases(self, name: str) -> dict[str, str]:
        """Each alias of `name` and the version it points at."""
        return {alias: str(v) for alias, v in (self._model(name).aliases or {}).items()}

    def _model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        check_name(name)
        try:
            model = self.client.get_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"Registered model {name!r}: {err.message}") from err
            names = sorted(m.name for m in self.client.search_registered_models(max_results=20))
            bare = re.split(r"[@/]", name, maxsplit=1)[0]
            if bare != name and bare in names:  # `promote twins@3`, `history twins@champion`
                raise RegistryError(
                    f"{name!r}: this command takes the model's name alone ({bare}); a version "
                    "or alias goes in its options (see --help)."
                ) from err
            known = ", ".join(names) or "none yet (`modelcycle register` makes one)"
            raise RegistryError(f"No registered model {name!r}; registered: {known}.") from err
        return model

    def _exists(self, name: str) -> bool:
        try:
            self._model(name)
        except RegistryError:
            return False
        return True

    def _run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        from modelcycle.tracking import browse_runs

        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            hint = HOW_TO_FIND.format(browse=browse_runs(self.uri))
            raise RegistryError(
                f"No run {run_id!r} in the tracking store {self.uri}. {hint}; pass workspace= "
                "(or logger.uri=) of the store the run was tracked in."
            ) from err

    def _has_model(self, run_id: str) -> bool:
        return any(a.path == "model" for a in self.client.list_artifacts(run_id))


def check_name(name: str) -> None:
    """Raise RegistryError unless `name` can name a registered model in every command.

    MLflow refuses '/' and ':'; a blank name or one with spaces would be printed unquoted in
    the commands the others suggest (`modelcycle export NAME@ALIAS`).
    """
    if not name.strip() or re.search(r"[\s/:]", name):
        raise RegistryError(
            f"model name {name!r}: give a name without spaces, '/' or ':', e.g. twins or twins_v2."
        )


def is_plain_name(name: str) -> bool:
    """Whether `name` keeps to NAME_RULE: a URL path segment and a shell word as it is."""
    return _NAME.fullmatch(name) is not None


def check_new_name(name: str) -> None:
    """Raise RegistryError unless `name` may name a new model: NAME_RULE.

    MLflow takes nearly any name, but one with a space, '?', '#' or '%' could not be reached
    at /v1/models/NAME/predict as it is written (curl, the load test, a proxy), and one
    beginning with '-' reads as an option. Names registered before stay readable
    (`check_name`); `serve` refuses those outside the rule.
    """
    if not is_plain_name(name):
        raise RegistryError(
            f"model name {name!r}: use {NAME_RULE}, e.g. twins or twins_v2 (a name is part "
            "of the server's URLs, /v1/models/NAME/predict, as it is)."
        )


def check_alias(alias: str) -> None:
    """Raise RegistryError unless MLflow takes `alias` as an alias name."""
    if not _ALIAS.fullmatch(alias):
        raise RegistryError(
            f"alias {alias!r}: use 1-255 letters, digits, _ or -, e.g. champion or staging."
        )
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise RegistryError(
            f"alias {alias!r} is reserved by MLflow (it names the latest or a numbered "
            "version); choose another, e.g. champion or staging."
        )


def latest_pipeline_run(tracking_uri: str, experiment: str) -> str:
    """The id of the newest finished parent run of `experiment`."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string="attributes.status = 'FINISHED' and tags.primary_metric != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise RegistryError(
            f"No finished pipeline run in experiment {experiment!r} at {tracking_uri}."
        )
    return str(runs[0].info.run_id)


def champion_note(version: Registered) -> str | None:
    """What the gate said of the champion for `version`, to print; None when nothing to say."""
    verdict = version.tags.get("gate.champion", "")
    if verdict.startswith("not compared: "):
        return (
            f"{verdict}; cross-validated means on other folds or data do not compare, so only "
            "the baseline gated it: compare the two before you promote it."
        )
    if verdict.startswith("beat "):
        return f"the champion comparison: {verdict}"
    return None


#: The parameters that decide a run's folds, beside its data (`data_hash`).
PROTOCOL_PARAMS = ("cv.n_folds", "seed")


def _complete_copy(marker: Path) -> dict[str, str]:
    """What the marker of a complete local copy says, its stamp and path; {} if unreadable."""
    try:
        done = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    ok = isinstance(done, dict) and all(isinstance(done.get(k), str) for k in ("stamp", "path"))
    return done if ok else {}


def _registered(v: Any) -> Registered:
    """An MLflow model version as a `Registered`."""
    at = (v.creation_timestamp or 0) / 1000
    return Registered(v.name, str(v.version), str(v.source), str(v.run_id), dict(v.tags), at)


def _protocol(run: Any) -> dict[str, str]:
    """How a run's cross-validated means were made: data, folds and the seed that split them.

    Keys the run did not record are left out (not compared).
    """
    found = {"data": run.data.tags.get("data_hash", "")}
    found |= {key: run.data.params.get(key, "") for key in PROTOCOL_PARAMS}
    return {key: value for key, value in found.items() if value}


def _protocol_differences(theirs: Mapping[str, str], mine: Mapping[str, str]) -> list[str]:
    """What differs between two runs' protocols, as `key X there, Y here` phrases."""

    def shown(key: str, value: str) -> str:
        return f"{value[:12]}…" if key == "data" else value

    return [
        f"{key} {shown(key, theirs[key])} there, {shown(key, mine[key])} here"
        for key in theirs
        if key in mine and theirs[key] != mine[key]
    ]


def _lineage(run: Any, candidate: Candidate, config: str) -> dict[str, str]:
    tags = run.data.tags
    lineage = {
        "lineage.run_id": run.info.run_id,
        "lineage.task": tags.get("task", ""),
        "lineage.model_name": tags.get("model_name") or tags.get("task", ""),
        "lineage.git_sha": tags.get("git_sha", "unknown"),
        "lineage.git_dirty": tags.get("git_dirty", "unknown"),
        "lineage.git_root": tags.get("git_root", "unknown"),
        "lineage.data_hash": tags.get("data_hash", ""),
        "lineage.packages": tags.get("packages", "{}"),
        "lineage.packages_git": tags.get("packages_git", "{}"),
        "lineage.config_uri": f"{run.info.artifact_uri}/config.yaml",
        "lineage.config": config,
        "lineage.reference_sample": f"{run.info.artifact_uri}/model/reference.npz",
        "lineage.held_out_sample": f"{run.info.artifact_uri}/model/held_out.npz",
        "gate.metric": candidate.metric,
    }
    metrics = {  # full precision: the gate compares against these exact values
        f"metric.{k}": repr(float(v))
        for k, v in run.data.metrics.items()
        if k.startswith(("model_", "baseline_", "reference_"))
    }
    return lineage | metrics


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
