"""Compose the Hydra config and turn it into typed objects: the one place config is read."""

from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import logging
import math
import os
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from modelcycle.kinds import describe_range, in_range, is_number, is_whole
from modelcycle.logs import warn_once
from modelcycle.messages import clause
from modelcycle.registry import Registry
from modelcycle.registry_hooks import HookError, hooks_from_config
from modelcycle.report_folders import ReportFolder
from modelcycle.tracking import TrackingSettings, tracking_uri, workspace_store

# Each group's settings class is imported where the group is read: reading the registry
# (`history`, `promote`) or printing the config need neither torch nor Lightning nor FastAPI.
if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from modelcycle.loadtest import Budgets, LoadPlan
    from modelcycle.monitoring.drift import DriftSettings
    from modelcycle.pipeline import PipelineSettings
    from modelcycle.search_space import Param
    from modelcycle.serving.app import ServeSettings
    from modelcycle.serving.loading import VariantChoice
    from modelcycle.sweep import StudySettings
    from modelcycle.tasks import Task
    from modelcycle.training import TrainerSettings

CONFIG_MODULE = "modelcycle.conf"
log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """An override or config value that cannot be used; the message says which and why."""


#: The constructor argument each of a task's groups is built into: `Task(source=, encoder=)`.
GROUP_ARGS = {"data": "source", "model": "encoder"}


#: The entry-point group through which outside packages add config groups: each names a
#: package laid out as `modelcycle.conf` (`task/`, `data/`, `model/`, `experiment/`...).
CONFIG_ENTRY_POINT_GROUP = "modelcycle.configs"


def config_packages() -> list[str]:
    """The packages config is composed from: modelcycle's own, then outside packages'.

    Hydra searches them in this order, so a built-in config of the same name wins. A package
    an entry point names that does not import is left out with a warning, said once.
    """
    from importlib.metadata import entry_points
    from importlib.util import find_spec

    packages = [CONFIG_MODULE]
    for ep in entry_points(group=CONFIG_ENTRY_POINT_GROUP):
        try:
            found = find_spec(ep.value) is not None
        except (ImportError, ValueError):  # a parent package that does not import
            found = False
        if found:
            packages.append(ep.value)
        else:
            warn_once(
                log,
                f"Config package {ep.value} (entry point {ep.name} in group "
                f"{CONFIG_ENTRY_POINT_GROUP}) does not import; its configs are left out. "
                "Install the package that ships it, or fix the entry point.",
            )
    return packages


def _configs(group: str, packages: Sequence[str] | None = None) -> dict[str, Traversable]:
    """Each config of `group` ("experiment", "task") by name, the first package's of a name.

    `packages` saves reading the entry points again (tens of milliseconds each time).
    """
    found: dict[str, Traversable] = {}
    for package in config_packages() if packages is None else packages:
        folder = files(package).joinpath(group)
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.name.endswith(".yaml"):
                found.setdefault(f.name[: -len(".yaml")], f)
    return found


def data_configs() -> dict[str, Traversable]:
    """Each data group's config file by name (`data=NAME`), modelcycle's and packages'."""
    return _configs("data")


def experiment_names() -> list[str]:
    """The experiments a run can name (`experiment=NAME`): every `experiment/*.yaml`."""
    return sorted(_configs("experiment"))


def experiments_by_task() -> dict[str, list[str]]:
    """Each task's experiments: which `experiment/*.yaml` overrides `/task` with it.

    An experiment that overrides no task runs the root config's default task. A task's
    config (`task/NAME.yaml`) names the task it builds; that name is the one listed.
    """
    import yaml

    default = _root_defaults()["task"]
    packages = config_packages()
    builds = _tasks_built(packages)
    runs: dict[str, list[str]] = {}
    for name, path in sorted(_configs("experiment", packages).items()):
        entries = (yaml.safe_load(path.read_text()) or {}).get("defaults", [])
        chosen = next(
            (d["override /task"] for d in entries if isinstance(d, dict) and "override /task" in d),
            default,
        )
        runs.setdefault(builds.get(chosen, chosen), []).append(name)
    return runs


def _root_defaults() -> dict[str, Any]:
    """The root config's default choice of each group (None: no group unless one is chosen)."""
    import yaml

    entries = yaml.safe_load(files(CONFIG_MODULE).joinpath("config.yaml").read_text())["defaults"]
    return {k: v for d in entries if isinstance(d, dict) for k, v in d.items()}


def task_configs() -> dict[str, str]:
    """Each task config (`task=CONFIG`) by the registered task it builds (its `name:`)."""
    named: dict[str, str] = {}
    for config, task in sorted(_tasks_built(config_packages()).items()):
        named.setdefault(task, config)
    return named


def _tasks_built(packages: Sequence[str]) -> dict[str, str]:
    """The registered task each task config (`task/CONFIG.yaml`) builds: its `name:`."""
    import yaml

    return {
        config: str((yaml.safe_load(path.read_text()) or {}).get("name", config))
        for config, path in _configs("task", packages).items()
    }


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with command-line style overrides (`key=value`)."""
    for override in overrides:
        if "=" not in override and not override.startswith("~"):  # `~key` deletes a key
            experiments = experiment_names()
            hint = (
                f"to run that experiment, write experiment={override}"
                if override in experiments
                else f"experiments: {', '.join(experiments)}"
            )
            raise ConfigError(
                f"{override!r} is not an override: give key=value, e.g. trainer.max_epochs=5 "
                f"or experiment=twins; {hint}."
            )
        if override.lstrip("+").partition("=")[0] == "task.name":
            raise ConfigError(_renamed_task(override.partition("=")[2]))
        null = _null_group(override) or _listed_group(override)
        if null:
            raise ConfigError(null)
    try:
        cfg = _compose(overrides)
    except HydraException as err:
        # Hydra appends where it searched (its own package among them): not the user's to fix.
        said = str(err).split("\nConfig search path:")[0].rstrip()
        unknown = _unknown_keys(overrides, said)
        if unknown:  # misspelt keys: Hydra's hint (append them with +) leads nowhere
            raise ConfigError(unknown) from err
        unconfigured = _unconfigured_task(overrides)
        if unconfigured:
            raise ConfigError(unconfigured) from err
        again = _group_added_again(overrides, said)
        if again:  # Hydra's hint (`override data: rice`) is for a defaults list
            raise ConfigError(again) from err
        raise ConfigError(
            f"Cannot compose the config with overrides {list(overrides)}: {said}"
        ) from err
    _check_min_epochs(cfg, overrides)
    return cfg


def _renamed_task(name: str) -> str:
    """What `task.name=NAME` is told: it would rename the default task, keeping its config."""
    configs = task_configs()
    way = f"task={configs[name]}" if name in configs else "task=CONFIG"
    said = (
        f"task.name={name}: this renames the task and keeps the chosen one's settings, data "
        f"and model (the twins task's, by default). Choose a task by its config, {way}, or "
        "by an experiment of it (`modelcycle tasks` lists them)."
    )
    if name not in configs and name in _task_names():
        said += " " + _no_config(name)
    return said


#: How to go without a group that a task may do without, for `GROUP=null`.
_REMOVABLE = {
    "data": "for a task that reads its own data",
    "model": "for a task that builds its own model",
}


def _null_group(override: str) -> str | None:
    """What `GROUP=null` is told: Hydra takes null for no group only in a defaults list.

    Given on the command line, it ended in Hydra's "Config group override must be a string
    or a list" traceback.
    """
    key, _, value = override.lstrip("+").partition("=")
    key = key.partition("@")[0]  # `data@place=null` names the data group too
    if value.strip().lower() != "null" or not key or key.startswith("~"):
        return None
    packages = config_packages()
    if not any(files(p).joinpath(key).is_dir() for p in packages):
        return None  # a key set to null (`data.cache_dir=null`), not a group
    names = ", ".join(sorted(_configs(key, packages))) or "(none)"
    if key in _REMOVABLE:
        without = f"`~{key}` removes it ({_REMOVABLE[key]}), or "
    elif _root_defaults().get(key, "") is None:
        without = "leave it out for none (the default), or "
    else:
        without = ""
    return f"{override}: a config group cannot be null; {without}{key}=NAME chooses one: {names}."


#: Groups whose config builds one object (`_target_`): a list of them merges into none.
_ONE_OBJECT = ("task", "data", "model")


def _listed_group(override: str) -> str | None:
    """What `data=[...]` is told (`task`, `data`, `model`): each builds one object.

    Hydra merges a list of a group's configs into one: `data=[qtim,rice]` read rice's source
    with qtim's keys beside it, and `data=[]` removed the group, both without a word.
    """
    key, _, value = override.lstrip("+").partition("=")
    key = key.partition("@")[0]
    if key not in _ONE_OBJECT or not value.strip().startswith("["):
        return None
    names = ", ".join(sorted(_configs(key, config_packages()))) or "(none)"
    without = f"`~{key}` removes it ({_REMOVABLE[key]}), or " if key in _REMOVABLE else ""
    return (
        f"{override}: a list merges several {key} configs into one; {without}{key}=NAME "
        f"chooses one: {names}."
    )


def _group_added_again(overrides: Sequence[str], said: str) -> str | None:
    """What `+GROUP=NAME` or `++GROUP=NAME` is told; None for other errors.

    `+` adds only a group the config lacks; `++` forces keys, never groups.
    """
    forced = re.search(r"force-add of config groups is not supported: '(\+\+[^'=]+=[^']*)'", said)
    if forced is not None:
        given = forced.group(1)
        group = given.lstrip("+").split("=")[0]
        return (
            f"{given}: ++ forces a key's value, and {group} is a config group; "
            f"{given.lstrip('+')} (without ++) chooses it."
        )
    match = re.match(r"Multiple values for (\S+)\. To override", said)
    if match is None:
        return None
    group = match.group(1)
    added = [o for o in overrides if o.startswith("+") and o.lstrip("+").split("=")[0] == group]
    if not added:
        return None
    plain = added[-1].lstrip("+")
    # experiment and debug are in the defaults list too, as none
    how = "in" if _root_defaults().get(group, "") is None else "chosen by"
    return (
        f"{added[-1]}: {group} is already {how} the config, and + adds only a group it "
        f"lacks; {plain} (without +) changes it."
    )


def _unconfigured_task(overrides: Sequence[str]) -> str | None:
    """Why `task=NAME` or `experiment=NAME` found no config, when NAME is a registered task."""
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in ("task", "experiment") and value not in _configs(key) and value in _task_names():
            return f"{key}={value}: no {key} config is named so. {_no_config(value)}"
    return None


def _no_config(task: str) -> str:
    return (
        f"The {task} task is registered, and no installed package gives its config: a package "
        f"ships one (task/{task}.yaml, an experiment) through the {CONFIG_ENTRY_POINT_GROUP!r} "
        "entry point; see docs/add-a-task.md."
    )


def _task_names() -> list[str]:
    from modelcycle.tasks import task_names

    return task_names()


def _check_min_epochs(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse a `trainer.min_epochs` given on the command line above `trainer.max_epochs`.

    Only a given one: an experiment's own `min_epochs` (10) yields to a small
    `trainer.max_epochs` for a quick run (`fit` caps it and logs so).

    Raises:
        ConfigError: Naming both values and the ways out.
    """
    given = any(o.lstrip("+").split("=")[0] == "trainer.min_epochs" for o in overrides)
    least = OmegaConf.select(cfg, "trainer.min_epochs", default=None)
    most = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    if given and is_whole(least) and is_whole(most) and least > most:
        raise ConfigError(
            f"trainer.min_epochs={least} is above trainer.max_epochs={most}: training stops "
            f"after max_epochs. Give trainer.min_epochs={most} or less, or a larger "
            "trainer.max_epochs."
        )


def _compose(overrides: Sequence[str]) -> DictConfig:
    outside = [f"pkg://{p}" for p in config_packages()[1:]]
    search = [f"hydra.searchpath=[{','.join(outside)}]"] if outside else []
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="config", overrides=[*search, *overrides])


def _unknown_keys(overrides: Sequence[str], said: str) -> str | None:
    """What to say when the overrides name keys the config lacks; None for other failures."""
    paths: list[str] = []
    rest = list(overrides)
    while match := re.match(r"Could not override '([^']+)'", said):
        paths.append(match.group(1))
        kept = [o for o in rest if o.lstrip("+~").split("=")[0] not in paths]
        if len(kept) == len(rest):  # not a key given on the command line
            return None
        rest = kept
        try:
            cfg = _compose(rest)
        except HydraException as err:
            said = str(err)
            continue
        return (
            _key_of_group_not_taken(cfg, paths, overrides)
            or _key_of_removed_group(paths, overrides)
            or not_a_key(cfg, *paths)
        )
    return None


def _key_of_removed_group(paths: Sequence[str], given: Sequence[str]) -> str | None:
    """What a key is told whose group `~GROUP` removed in the same command (None if none).

    `~data data.root=/x` read "data.root is not a key of the composed config".
    """
    removed = {o[1:].partition("=")[0] for o in given if o.startswith("~")}
    for path in paths:
        group = path.partition(".")[0]
        if group in removed and "." in path:
            return (
                f"{path}: ~{group} in the same command removes the {group} group, so it has "
                f"no keys to set; drop ~{group} to set {path}, or drop {path}."
            )
    return None


def _key_of_group_not_taken(
    cfg: DictConfig, paths: Sequence[str], given: Sequence[str]
) -> str | None:
    """What a key of a data or model group is told when the task takes no such group.

    `experiment=blobs model.hidden=8`: the experiment drops the group, and Hydra found no
    key to set; "not a key of the composed config" hid that the task builds its own model.
    """
    task = OmegaConf.select(cfg, "task.name")
    for path in paths:
        group = path.partition(".")[0]
        if group in GROUP_ARGS and not _task_takes(task, GROUP_ARGS[group]):
            said = [o for o in given if o.lstrip("+").partition("=")[0] == path]
            return _not_taken(said[-1] if said else path, group, task)
    return None


def _task_takes(task: Any, arg: str) -> bool:
    """Whether the task registered as `task` is built with `arg` (True when it cannot tell)."""
    from modelcycle.tasks import get_task

    try:
        return _takes(inspect.signature(get_task(task)).parameters, arg)
    except (KeyError, TypeError, ValueError):  # no such task, or no signature to read
        return True


def not_a_key(cfg: DictConfig, *paths: str) -> str:
    """Say that each of `paths` is not a key of `cfg`, with the closest keys beside it."""
    said = []
    for path in paths:
        parent, _, key = path.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
        close = [
            ".".join(filter(None, (parent, k))) for k in difflib.get_close_matches(key, keys, 3)
        ]
        # the same name in another section (max_epochs=5 for trainer.max_epochs=5)
        # (not the same dotted path inside a section: a sweep's space holds model.dropuot)
        close += [
            p
            for p in _key_paths(cfg)
            if p.rpartition(".")[2] == key
            and p not in close
            and not (parent and p.endswith(f".{path}"))
        ]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        said.append(f"{path}{hint}")
    what = "is not a key" if len(paths) == 1 else "are not keys"
    return (
        f"{' and '.join(said)} {what} of the composed config; `modelcycle config` prints the "
        "valid keys."
    )


def _key_paths(node: DictConfig, prefix: str = "") -> list[str]:
    """Every key of `node` and its sections, as dotted paths."""
    paths: list[str] = []
    for key in node:
        path = f"{prefix}{key!s}"
        paths.append(path)
        child = node._get_node(key)  # not resolved: ${...} values need not resolve here
        if isinstance(child, DictConfig):
            paths += _key_paths(child, f"{path}.")
    return paths


@dataclass(frozen=True)
class Assembled:
    """The objects a run needs, built from one composed config."""

    task: Task[Any]
    pipeline: PipelineSettings
    trainer: TrainerSettings
    tracking: TrackingSettings
    workspace: Path
    resolved: dict[str, Any]


def assemble(cfg: DictConfig, given: Sequence[str] = ()) -> Assembled:
    """Build the task (registry lookup + instantiated data source and encoder) and settings.

    Args:
        cfg: The composed config.
        given: The overrides the user gave (`compose_config`'s): a data or model group they
            choose for a task that takes none is refused, not dropped.
    """
    from modelcycle.pipeline import PipelineSettings
    from modelcycle.tasks import get_task

    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    task_params = {k: v for k, v in resolved["task"].items() if k != "name"}
    task_cls = get_task(cfg.task.name)
    counts = (("seed", resolved["seed"], 0), ("cv.n_folds", resolved["cv"]["n_folds"], 1))
    for name, value, least in counts:
        if not is_whole(value) or value < least:
            raise ConfigError(f"{name}={value!r}: give a whole number >= {least}.")
    if resolved["seed"] >= 2**32:  # numpy's generators take 32-bit seeds
        raise ConfigError(f"seed={resolved['seed']}: give a whole number from 0 to {2**32 - 1}.")
    if resolved["cv"]["n_folds"] < task_cls.min_folds:
        raise ConfigError(
            f"cv.n_folds={resolved['cv']['n_folds']}: the {cfg.task.name} task needs at least "
            f"{task_cls.min_folds} folds."
        )
    report_dir = resolved.get("report_dir")
    if report_dir is not None and not isinstance(report_dir, str):
        raise ConfigError(
            f"report_dir={report_dir!r}: give a folder path, or null for one per run."
        )
    check_kinds(task_cls, "task", task_params)  # the task's constructor checks the ranges
    check_ranges(task_cls, "task", task_params)  # its choices: the ones the model takes
    # A task that reads its own data and builds its own model takes no `source` or `encoder`:
    # the data and model groups are then not built, nor recorded as the run's.
    groups = _groups_taken(task_cls, cfg, given)
    for group in ("data", "model"):
        if group not in groups:
            resolved.pop(group, None)
    for group in groups:
        check_group(resolved, group, task_cls, cfg.task.name)
    check_nodes(resolved)
    try:
        built = {arg: instantiate(cfg[group]) for group, arg in groups.items()}
    except HydraException as err:
        if isinstance(err.__cause__, ValueError):  # the target's own words (DataError too)
            raise ConfigError(str(err.__cause__)) from err
        raise ConfigError(f"Cannot build the data source or the model: {err}") from err
    return Assembled(
        task=_build(  # kinds checked above, before the data source was built
            task_cls, "task", kinds=False, **built, **task_params
        ),
        pipeline=PipelineSettings(
            resolved["run_name"],
            resolved["cv"]["n_folds"],
            resolved["seed"],
            Path(report_dir) if report_dir else None,
        ),
        trainer=trainer_settings(resolved["trainer"]),
        tracking=_build(TrackingSettings, "logger", **resolved["logger"]),
        workspace=workspace_of(cfg),
        resolved=without_secrets(resolved),
    )


def _groups_taken(task_cls: Any, cfg: DictConfig, given: Sequence[str] = ()) -> dict[str, str]:
    """The data and model groups the task's constructor takes, each with its argument's name.

    A constructor takes `source` (the data group) and `encoder` (the model group) by name or
    through **kwargs; one that names neither is given neither. The base config's default
    groups are then dropped; one chosen in `given` (`data=rice`) is refused.

    Raises:
        ConfigError: The config has no group the constructor needs, or the user chose one it
            does not take, naming it and the way out.
    """
    try:
        params = inspect.signature(task_cls).parameters
    except (TypeError, ValueError):  # no signature to read: give it what the config has
        return {g: arg for g, arg in GROUP_ARGS.items() if g in cfg}
    taken: dict[str, str] = {}
    for group, arg in GROUP_ARGS.items():
        param = params.get(arg)
        if group in cfg and _takes(params, arg):
            taken[group] = arg
        elif group in cfg:
            _check_not_chosen(group, given, cfg.task.name)
            log.info("The %s task builds its own %s: the %s group is not used.", cfg.task.name,
                     "data" if group == "data" else "model", group)  # fmt: skip
        elif param is not None and param.default is param.empty:
            raise ConfigError(
                f"{group}: the {cfg.task.name} task builds from a {group} group ({arg}), and "
                f"this config has none. Give one ({group}=NAME), or run an experiment of the "
                "task (`modelcycle tasks` lists them)."
            )
    return taken


def _takes(params: collections.abc.Mapping[str, inspect.Parameter], arg: str) -> bool:
    """Whether a constructor of these parameters takes `arg`, by name or through **kwargs."""
    return arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _check_not_chosen(group: str, given: Sequence[str], task: str) -> None:
    """Refuse `group=NAME` or `group.key=value` given for a task that takes no `group`.

    Dropped with a log line, `train task=blobs data=rice` trained on the task's own data
    while the command line said rice; `data.root=/x` was dropped without a word.
    """
    chosen = [o for o in given if "=" in o and _in_group(o, group)]
    if chosen:
        raise ConfigError(_not_taken(chosen[-1], group, task))


def _in_group(override: str, group: str) -> bool:
    """Whether `override` chooses `group` or sets a key of it (`~key` deletes, and is not)."""
    key = override.lstrip("+").partition("=")[0]
    return key == group or key.startswith(f"{group}.")


def _not_taken(override: str, group: str, task: str) -> str:
    """What an override of `group` is told when the task takes no such group."""
    own = "reads its own data" if group == "data" else "builds its own model"
    return (
        f"{override}: the {task} task {own} and takes no {group} group. "
        f"Leave {override.lstrip('+')} out, or choose a task that takes one "
        "(`modelcycle tasks` lists them)."
    )


def check_group(resolved: dict[str, Any], group: str, task_cls: Any = None, task: str = "") -> None:
    """Check a group's keys, kinds, ranges and choices against its `_target_`.

    What `assemble` runs before building anything; a command that builds the target itself
    (`data prepare`, `data fetch qtim-synthetic`) runs it first too. With `task_cls`, the
    data source is also checked to be one the task reads, and the model one it builds.

    Raises:
        ConfigError: Naming `group.key`, the value and what to give.
    """
    values = {k: v for k, v in resolved[group].items() if not k.startswith("_")}
    try:
        target = get_object(resolved[group]["_target_"])
    except (KeyError, ImportError, ValueError):
        return  # instantiate names a target that does not load
    if task_cls is not None and group == "data":
        check_source(task_cls, task, target)
    if task_cls is not None and group == "model":
        check_model(task_cls, task, target)
    check_known(target, group, values)
    check_kinds(target, group, values)
    check_ranges(target, group, values)


#: Config values that are secrets (group, key): never logged, written or tagged.
SECRETS = (("serve", "api_key"),)
REDACTED = "<redacted>"


def without_secrets(resolved: dict[str, Any]) -> dict[str, Any]:
    """`resolved` with every secret that is set replaced by `REDACTED`.

    The resolved config goes to the run's parameters, its config.yaml and the registered
    version's lineage; `serve.api_key` resolves from MODELCYCLE_API_KEY, so a train in a
    shell holding the key wrote it to all three.
    """
    clean = dict(resolved)
    for group, key in SECRETS:
        values = clean.get(group)
        if isinstance(values, dict) and values.get(key) is not None:
            clean[group] = {**values, key: REDACTED}
    return clean


def check_nodes(resolved: dict[str, Any]) -> None:
    """A graph model's per-node sizes against the node count the data config gives.

    A data source whose config fixes the graph's nodes says so with `NODES` (the setting
    that gives them, the count, and how to give more); a model whose values are bounded by
    them checks them with `CHECK_NODES`, which raises ValueError("key=value: ...") naming
    both settings.

    Raises:
        ConfigError: Naming `model.key`, the value and the data key that bounds it.
    """
    try:
        source = get_object(resolved["data"]["_target_"])
        model = get_object(resolved["model"]["_target_"])
    except (KeyError, ImportError, ValueError):
        return  # instantiate names a target that does not load
    nodes_of, check = getattr(source, "NODES", None), getattr(model, "CHECK_NODES", None)
    nodes = nodes_of(resolved["data"]) if nodes_of is not None else None
    if check is None or nodes is None:
        return
    try:
        check(resolved["model"], *nodes)
    except ValueError as err:
        raise ConfigError(f"model.{err}") from err


def check_source(task_cls: Any, task: str, target: Any) -> None:
    """Refuse a data source the task cannot read (`Task.data_sources`), naming both.

    Raises:
        ConfigError: The task, what it reads, what the config gives, and the way out.
    """
    takes = getattr(task_cls, "data_sources", ())
    if not takes or (isinstance(target, type) and issubclass(target, takes)):
        return
    raise _not_the_tasks("data", f"the {task} task reads", takes, target)


def check_model(task_cls: Any, task: str, target: Any) -> None:
    """Refuse a model group the task cannot build (`Task.model_targets`), naming both.

    Raises:
        ConfigError: The task, what it builds, what the config gives, and the way out.
    """
    takes = getattr(task_cls, "model_targets", ())
    if not takes or any(target is t for t in takes):
        return
    raise _not_the_tasks("model", f"the {task} task builds", takes, target)


def _not_the_tasks(group: str, does: str, takes: Sequence[Any], target: Any) -> ConfigError:
    """`GROUP: the TASK task reads/builds A or B GROUP, and the config gives C`, and the way out."""
    names = " or ".join(t.__name__ for t in takes)
    given = getattr(target, "__name__", str(target))
    what = "data" if group == "data" else f"{group}s"
    return ConfigError(
        f"{group}: {does} {names} {what}, and the config gives {given}. Choose an experiment "
        f"of the task (`modelcycle tasks` lists them) or its own {group} group."
    )


def trainer_settings(values: dict[str, Any]) -> TrainerSettings:
    """The `trainer` group as settings, checked against the launcher of this process."""
    from modelcycle.training import LaunchError, TrainerSettings, check_launch

    settings = _build(TrainerSettings, "trainer", kinds=False, **values)
    try:
        check_launch(settings)
    except LaunchError as err:
        raise ConfigError(f"trainer config: {err}") from err
    return settings


T = TypeVar("T")


def _build(cls: Callable[..., T], group: str, kinds: bool = True, **values: Any) -> T:
    """Call `cls(**values)`; a key it does not take or a value it refuses is a ConfigError.

    An unknown key is named `group.key=value`; a refused value in `cls`'s own words, which
    name `group.key` (the settings classes do) or follow `group config:`. The keys, and
    whether `cls` is left abstract, are checked before the constructor runs: a TypeError from
    inside it is a bug of the class, not of the config, and is raised as it is.

    With `kinds`, a value of the wrong kind (text for a number) is named first; without, `cls`
    names wrong kinds itself, with its ranges in the message.
    """
    _check_implemented(cls, group)
    if kinds:
        check_kinds(cls, group, values)
    _check_keys(cls, group, values)
    try:
        return cls(**values)
    except ValueError as err:  # a key it takes, with a value it refuses; the message names both
        said = str(err)
        raise ConfigError(
            said if said.startswith(f"{group}.") else f"{group} config: {said}"
        ) from err


def _check_implemented(cls: Callable[..., Any], group: str) -> None:
    """Refuse a class with abstract methods left (Python's TypeError read as a config error)."""
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        them = "them" if len(missing) > 1 else "it"
        raise ConfigError(
            f"The {group} class {cls.__module__}:{cls.__qualname__} does not implement "
            f"{', '.join(missing)} of the {group} contract; add {them} (docs/add-a-task.md "
            "says what each does)."
        )


def _check_keys(cls: Callable[..., Any], group: str, values: dict[str, Any]) -> None:
    """Refuse a key `cls` does not take, named as `group.key=value`, or one it needs, unset."""
    takes = _keys_taken(cls)
    known = ", ".join(k for k in sorted(takes or ()) if k not in ("source", "encoder"))
    unknown = sorted(set(values) - takes) if takes is not None else []
    if unknown:
        key, name = unknown[0], getattr(cls, "__name__", str(cls))
        raise ConfigError(
            f"{group}.{key}={values[key]!r}: {name} takes no {key!r}; it takes {known}."
        )
    try:
        inspect.signature(cls).bind(**values)
    except TypeError as err:  # a key it needs and the config does not set
        raise ConfigError(f"{group} config: {clause(err)}. Valid keys: {known}.") from err


def _keys_taken(cls: Callable[..., Any]) -> set[str] | None:
    """The keywords `cls` takes, following `**kwargs` on to its bases' (None: any)."""
    taken: set[str] = set()
    for owner in getattr(cls, "__mro__", (cls,)):
        init = vars(owner).get("__init__") if isinstance(owner, type) else owner
        if owner is object or init is None:
            continue
        params = inspect.signature(init).parameters.values()
        taken |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if all(p.kind is not p.VAR_KEYWORD for p in params):
            return taken - {"self"}
    return None


def check_known(target: Any, group: str, values: dict[str, Any]) -> None:
    """Name a key `target` does not take (one that takes **kwargs takes any).

    Hydra passed it on and the constructor's TypeError came out as a traceback ("EgoGNN
    got an unexpected keyword argument 'dim'").
    """
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no signature to read: the target decides
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(values) - set(params))
    if unknown:
        name = getattr(target, "__name__", str(target))
        raise ConfigError(
            f"{group}.{unknown[0]}: {name} takes no {unknown[0]!r}; it takes "
            f"{', '.join(sorted(params))}."
        )


def check_kinds(target: Any, group: str, values: dict[str, Any]) -> None:
    """Name a value whose kind `target`'s signature rules out: text for a number, say.

    Only numbers and switches are checked (the values a wrong kind turns into a crash deep
    in training, not a message); every other annotation is left to the target. A class's
    hints are gathered over its bases, so a subclass passing `**kwargs` on is covered.

    Raises:
        ConfigError: Naming `group.key`, the value and the kind to give.
    """
    hints: dict[str, Any] = {}
    for owner in reversed(getattr(target, "__mro__", (target,))):
        init = vars(owner).get("__init__") if isinstance(owner, type) else owner
        if owner is object or init is None:
            continue
        try:
            hints |= typing.get_type_hints(init)
        except (NameError, TypeError):  # a name only the type checker sees: nothing to check
            continue
    for key, value in values.items():
        kind = _kind_of(hints.get(key))
        if kind is not None and not _fits(value, hints[key]):
            # Hydra reads a name made of digits as a number: say how to keep it text
            quote = (
                f" (quote a name of digits: {group}.{key}=\"'{value}'\")"
                if is_number(value) and kind.startswith(("text", "a path"))
                else ""
            )
            raise ConfigError(f"{group}.{key}={value!r}: give {kind}{quote}.")


def check_ranges(target: Any, group: str, values: dict[str, Any]) -> None:
    """Name a value outside what `target` declares in `RANGES` or `CHOICES`.

    `RANGES` maps a key to its `Range`, `CHOICES` to the values it takes, and `CHECK` (if
    any) is called with `values` and raises ValueError("key=value: ...") for one it refuses
    (a name looked up in a library, say). A model is built
    only once the data is read (its input width comes from the data); what it declares lets
    a width of 0, a dropout of 2 or an unknown readout be named before that. A list (hidden
    widths) is checked item by item.

    Raises:
        ConfigError: Naming `group.key`, the value and the range or the choices.
    """
    for key, choices in getattr(target, "CHOICES", {}).items():
        if key in values and values[key] not in choices:
            listed = ", ".join(map(str, choices))
            raise ConfigError(f"{group}.{key}={values[key]!r}: give one of {listed}.")
    check = getattr(target, "CHECK", None)
    if check is not None:
        try:
            check(values)
        except ValueError as err:
            raise ConfigError(f"{group}.{err}") from err
    for key, bounds in getattr(target, "RANGES", {}).items():
        value = values.get(key)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        if not all(in_range(v, bounds) for v in items):
            each = "each " if isinstance(value, list) else "a "
            raise ConfigError(
                f"{group}.{key}={value!r}: give {each}value {describe_range(bounds)}."
            )


_KINDS = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    Path: "a path",
}


def _members(hint: Any) -> tuple[list[Any], bool]:
    """The types a hint allows besides None, and whether it allows None."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return [a for a in args if a is not type(None)], type(None) in args
    return [hint], False


def _kind_of(hint: Any) -> str | None:
    """What to ask for when `hint` is a number, switch, text, path or list of numbers; or None."""
    element = _element(hint)
    if element is not None:
        kind = _kind_of(element)
        return None if kind is None else f"a list of {kind.removeprefix('a ')}s, e.g. [64, 32]"
    members, optional = _members(hint)
    if hint is None or not members or not all(m in _KINDS for m in members):
        return None
    if float in members:  # a whole number is a number
        members = [m for m in members if m is not int]
    either = " or ".join(dict.fromkeys(_KINDS[m] for m in members))
    return either + (" or null" if optional else "")


def _element(hint: Any) -> Any:
    """The element type of `list[X]`, `tuple[X, ...]` or `Sequence[X]`; else None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, collections.abc.Sequence) and len(args) == 1:
        return args[0]
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return args[0]
    return None


def _fits(value: Any, hint: Any) -> bool:
    element = _element(hint)
    if element is not None:
        return isinstance(value, list | tuple) and all(_fits(v, element) for v in value)
    members, optional = _members(hint)
    if value is None:
        return optional
    return any(
        (m is bool and isinstance(value, bool))
        or (m is int and is_whole(value))
        or (m is float and is_number(value))
        or (m in (str, Path) and isinstance(value, str))
        for m in members
    )


def build_registry(cfg: DictConfig) -> Registry:
    """The registry in the configured tracking store, with the configured alias-move hooks."""
    hooks_config = cfg.registry.hooks
    if not isinstance(hooks_config, ListConfig):
        raise ConfigError(
            f"registry.hooks={hooks_config!r}: give a list of hooks, e.g. "
            '[{command: ["./notify.sh", "{model}", "{alias}", "{version}"]}] or '
            "[{github: owner/name}]; [] for none."
        )
    items = OmegaConf.to_container(hooks_config, resolve=True)
    try:
        hooks = hooks_from_config(items)  # type: ignore[arg-type]
    except HookError as err:
        raise ConfigError(f"registry.hooks: {err}") from err
    return Registry(trained_store(cfg), hooks)


def trained_store(cfg: DictConfig) -> str:
    """The tracking URI of a store that training has written to, for commands that read it.

    Raises:
        ConfigError: The workspace's own store does not exist: creating an empty one in a
            mistyped workspace would only hide the mistake.
    """
    settings, workspace = tracking_settings(cfg), workspace_of(cfg)
    if not settings.uri and not workspace_store(workspace).is_file():
        raise ConfigError(
            f"workspace={workspace} holds no tracking store (mlflow.db): nothing was trained "
            "there. Point workspace= at the one you trained in, or run `modelcycle pipeline "
            "twins` there first."
        )
    return tracking_uri(settings, workspace)


def tracking_settings(cfg: DictConfig) -> TrackingSettings:
    """Where runs are tracked: the `logger` config group."""
    values = OmegaConf.to_container(cfg.logger, resolve=True)
    return _build(TrackingSettings, "logger", **values)  # type: ignore[arg-type]


def workspace_of(cfg: DictConfig) -> Path:
    """The workspace root as an absolute path, the one place every command finds it.

    Raises:
        ConfigError: No path, or a path that is a file or lies under one (the first write
            ended in Python's "File exists" or "Not a directory", naming no setting).
    """
    if not isinstance(cfg.workspace, str) or not cfg.workspace:
        raise ConfigError(f"workspace={cfg.workspace!r}: give a folder path, e.g. workspace=runs.")
    root = Path(cfg.workspace).expanduser().resolve()
    blocker = next((p for p in (root, *root.parents) if p.exists()), root)
    if not blocker.is_dir():
        where = "is a file" if blocker == root else f"lies under {blocker}, a file"
        given, fix = _workspace_source(cfg)
        raise ConfigError(f"{given}: {root} {where}, not a folder; {fix}")
    return root


def _workspace_source(cfg: DictConfig) -> tuple[str, str]:
    """How the workspace was given (`workspace=` or MODELCYCLE_HOME) and how to give a folder."""
    if OmegaConf.is_interpolation(cfg, "workspace") and "MODELCYCLE_HOME" in os.environ:
        return (
            f"MODELCYCLE_HOME={os.environ['MODELCYCLE_HOME']}",
            "set MODELCYCLE_HOME to a folder (made if missing), or give workspace=FOLDER.",
        )
    return f"workspace={cfg.workspace}", "give workspace= a folder (made if missing)."


@dataclass(frozen=True)
class ServeConfig:
    """Where to listen, the server's limits, and where it writes: captures, model copies.

    `capture_file` is the capture store whether or not the server captures (`monitor`
    reads it); `cache_dir` holds the server's hash-checked copies of the versions it serves.
    Both default to the workspace, and either may point elsewhere, e.g. when the workspace
    is mounted read-only.
    """

    host: str
    port: int
    settings: ServeSettings
    capture: bool
    capture_file: Path
    cache_dir: Path
    workers: int
    max_connections: int | None
    variant: VariantChoice

    @property
    def capture_path(self) -> Path | None:
        """The capture store the server writes, or None when it captures nothing."""
        return self.capture_file if self.capture else None


def serve_config(cfg: DictConfig) -> ServeConfig:
    """The server's settings from the `serve` config group."""
    from modelcycle.serving.app import ServeSettings
    from modelcycle.serving.loading import VariantChoice, default_threads

    values: dict[str, Any] = OmegaConf.to_container(cfg.serve, resolve=True)  # type: ignore[assignment]
    own = {"host", "port", "capture", "capture_path", "cache_dir", "workers", "max_connections"}
    own |= {"variant", "int8_max_drop"}
    _check_group_keys("serve", values, {*own, *inspect.signature(ServeSettings).parameters})
    for key in ("host", "port", "capture", "cors_origins", "threads"):
        if key not in values:  # `~serve.host` took it out
            raise ConfigError(
                f"serve.{key}: the serve group has no {key}; give one (`modelcycle config` "
                "without the override shows the default)."
            )
    host, port, capture = values.pop("host"), values.pop("port"), values.pop("capture")
    if not isinstance(capture, bool):
        raise ConfigError(f"serve.capture={capture!r}: give true or false.")
    capture_path, cache_path = values.pop("capture_path", None), values.pop("cache_dir", None)
    workers = values.pop("workers", 1)
    if not is_whole(workers) or workers < 1:
        raise ConfigError(f"serve.workers={workers!r}: give a whole number of processes, >= 1.")
    connections = values.pop("max_connections", None)
    if connections is not None and (not is_whole(connections) or connections < 1):
        raise ConfigError(
            f"serve.max_connections={connections!r}: give a whole number >= 1, or null for "
            "no limit."
        )
    variant = _build(
        VariantChoice,
        "serve",
        name=values.pop("variant", "fp32"),
        int8_max_drop=values.pop("int8_max_drop", 0.01),
    )
    origins = values["cors_origins"]
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError(
            f"serve.cors_origins={origins!r}: give a list of origins, e.g. "
            '["https://example.org"], or [] to keep CORS closed.'
        )
    values["cors_origins"] = tuple(origins)
    if values["threads"] is None:  # 0 is refused below, not taken for "one per core"
        values["threads"] = default_threads()
    settings = _build(ServeSettings, "serve", kinds=False, **values)
    if not is_whole(port) or not 1 <= port <= 65535:
        raise ConfigError(f"serve.port={port!r}: give a TCP port number from 1 to 65535.")
    workspace = workspace_of(cfg)
    capture_file = _serve_path(capture_path, "capture_path", "a file")
    cache_dir = _serve_path(cache_path, "cache_dir", "a folder")
    return ServeConfig(
        host,
        port,
        settings,
        capture,
        capture_file or workspace / "capture.db",
        cache_dir or workspace / "serving",
        workers,
        connections,
        variant,
    )


def _serve_path(value: object, key: str, kind: str) -> Path | None:
    """`serve.KEY` as an absolute path, or None (null: the workspace's)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"serve.{key}={value!r}: give {kind} path, or null for the workspace's.")
    path = Path(value).expanduser().resolve()
    wrong = path.is_dir() if kind == "a file" else path.exists() and not path.is_dir()
    if wrong:
        other = "a folder" if kind == "a file" else "a file"
        raise ConfigError(f"serve.{key}={value}: {path} is {other}; give {kind} path.")
    return path


@dataclass(frozen=True)
class MonitorConfig:
    """Drift settings, and how often and on how many captures the server checks drift."""

    drift: DriftSettings
    interval_seconds: float
    window: int


def monitor_config(cfg: DictConfig) -> MonitorConfig:
    """The `monitor` config group as typed settings; a bad value names the key."""
    from modelcycle.monitoring.drift import DriftSettings

    values: dict[str, Any] = OmegaConf.to_container(cfg.monitor, resolve=True)  # type: ignore[assignment]
    watch = ("interval_seconds", "window")  # the server's, beside the drift test's own
    _check_group_keys("monitor", values, {*(_keys_taken(DriftSettings) or ()), *watch})
    interval, window = (values.pop(key, None) for key in watch)  # unset (~key): named below
    drift = _build(DriftSettings, "monitor", **values)
    if not is_number(interval) or not 0 <= interval < math.inf:
        raise ConfigError(
            f"monitor.interval_seconds={interval!r}: give the seconds between the server's "
            "drift checks, >= 0 (0: never)."
        )
    if not is_whole(window) or window < 2:
        raise ConfigError(
            f"monitor.window={window!r}: give a whole number of captures >= 2, the newest the "
            "server tests."
        )
    return MonitorConfig(drift, float(interval), window)


def loadtest_config(cfg: DictConfig) -> tuple[LoadPlan, Budgets]:
    """The `loadtest` config group: how hard and how long, and the budgets."""
    from modelcycle.loadtest import Budgets, LoadPlan

    values: dict[str, Any] = OmegaConf.to_container(cfg.loadtest, resolve=True)  # type: ignore[assignment]
    planned = sorted(_keys_taken(LoadPlan) or ())
    _check_group_keys("loadtest", values, {*planned, *(_keys_taken(Budgets) or ())})
    plan = {key: values.pop(key) for key in planned if key in values}
    return _build(LoadPlan, "loadtest", **plan), _build(Budgets, "loadtest", **values)


def _check_group_keys(group: str, values: dict[str, Any], takes: set[str]) -> None:
    """Refuse a key no part of `group` takes, named as `group.key=value` with those it takes.

    For a group read by several settings classes: each one's own check would list only
    its share of the keys.
    """
    unknown = sorted(set(values) - takes)
    if unknown:
        key = unknown[0]
        raise ConfigError(
            f"{group}.{key}={values[key]!r}: the {group} group takes no {key!r}; it takes "
            f"{', '.join(sorted(takes))}."
        )


#: Config keys a sweep may not search: they change the folds, the objective or where results go.
UNSWEEPABLE = ("seed", "cv", "sweep", "workspace", "logger", "report_dir", "run_name")


@dataclass(frozen=True)
class SweepConfig:
    """A sweep's study, search space and report folder (named now, claimed at the end)."""

    study: StudySettings
    space: list[Param]
    report_dir: ReportFolder


def sweep_config(
    cfg: DictConfig, trials: int | None = None, study: str | None = None, storage: str | None = None
) -> SweepConfig:
    """The `sweep` config group, with command-line values taking precedence over it.

    Raises:
        ConfigError: A search-space entry that is malformed or names no config key, or a
            storage URL that cannot open (checked before any data is read).
    """
    from modelcycle.search_space import SpaceError, parse_space
    from modelcycle.sweep import StudySettings, SweepError, check_storage

    values: dict[str, Any] = OmegaConf.to_container(cfg.sweep, resolve=True)  # type: ignore[assignment]
    workspace = workspace_of(cfg)
    try:
        space = parse_space(values.pop("space") or {})
        settings = StudySettings(
            name=study or values["study"] or str(cfg.run_name),
            storage=storage or values["storage"] or f"sqlite:///{workspace / 'optuna.db'}",
            trials=trials or values["trials"],
            seed=values["seed"],
            pruner=values["pruner"],
        )
        if storage or values["storage"]:  # not the default: the sweep makes the workspace
            check_storage(settings.storage, "--storage" if storage else "sweep.storage", workspace)
    except (SpaceError, SweepError) as err:
        raise ConfigError(str(err)) from err
    for param in space:
        _check_sweepable(cfg, param.path)
    _check_one_process(cfg)
    _check_space_ends(cfg, space)
    report = ReportFolder(workspace / "reports", f"sweep-{settings.name}")
    return SweepConfig(settings, space, report)


def _check_space_ends(cfg: DictConfig, space: list[Param]) -> None:
    """Refuse a space some of whose trials could not even start (a dropout range up to 2).

    The config is assembled (no data read) with each end of every range and with every
    choice, each alone on top of `cfg`, so a value the task or model refuses is named before
    the study begins, not as a failed trial after the data loaded.
    """
    assemble(cfg)  # the base fails on its own words, not as a space entry's
    for param in space:
        for end, value in param.ends():
            trial = copy.deepcopy(cfg)
            OmegaConf.update(trial, param.path, value, merge=False)
            try:
                assemble(trial)
            except ConfigError as err:
                raise ConfigError(
                    f"sweep.space.{param.path}: a trial that draws {end} {value!r} could not "
                    f"start ({str(err).rstrip('.')}); narrow the range or drop the choice."
                ) from err


def _check_one_process(cfg: DictConfig) -> None:
    """Refuse DDP settings: a sweep trains each trial in one process.

    Lightning's DDP launcher would start the whole sweep command again in its second process.
    """
    trainer = cfg.trainer
    many = str(trainer.devices) not in ("1", "auto") or int(trainer.num_nodes) != 1
    if many or str(trainer.strategy).startswith("ddp"):
        raise ConfigError(
            f"trainer.devices={trainer.devices}, trainer.num_nodes={trainer.num_nodes}, "
            f"trainer.strategy={trainer.strategy}: a sweep trains each trial in one process. "
            "Run several sweep workers on one study instead (the same --study and --storage)."
        )


def _check_sweepable(cfg: DictConfig, path: str) -> None:
    """`path` must name a value of the composed config that a trial may change."""
    where = f"sweep.space.{path}"
    if path.split(".")[0] in UNSWEEPABLE:
        raise ConfigError(
            f"{where}: {path} cannot be searched, it changes the folds, the objective or where "
            f"results go ({', '.join(UNSWEEPABLE)} are fixed for a study); search model, task, "
            "trainer or data keys."
        )
    missing = object()
    value = OmegaConf.select(cfg, path, default=missing)
    if value is missing:
        group = path.split(".")[0]
        if group in ("task", "data", "model") and OmegaConf.select(cfg, group) is None:
            said = f"this config has no {group} group"  # the task builds its own
        else:
            said = f"the {cfg.task.name} task's config has no {path}"
        raise ConfigError(
            f"{where}: {said}, and the search space names it. A task's experiment chooses a "
            "space of its own (sweep/space/NAME.yaml; `override /sweep/space: NAME` in the "
            f"experiment, or sweep/space=NAME here). {not_a_key(cfg, path)}"
        )
    if isinstance(value, DictConfig):
        raise ConfigError(
            f"{where}: {path} is a whole config section; search one of its values, "
            f"e.g. {path}.{next((str(k) for k in value), 'key')}."
        )
