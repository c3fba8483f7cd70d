"""Compose the Hydra config and turn it into typed objects: the one place config is read."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from modelcycle.pipeline import PipelineSettings
from modelcycle.tasks import Task, get_task
from modelcycle.tracking import TrackingSettings
from modelcycle.training import TrainerSettings

log = logging.getLogger(__name__)

CONFIG_MODULE = "modelcycle.conf"


class ConfigError(ValueError):
    """An override or config value that cannot be used; the message says which and why."""


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose `conf/config.yaml` with command-line style overrides (`key=value`)."""
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(
            f"Cannot compose the config with overrides {list(overrides)}: {err}"
        ) from err
    return cfg


@dataclass(frozen=True)
class Assembled:
    """The objects a run needs, built from one composed config."""

    task: Task[Any]
    pipeline: PipelineSettings
    trainer: TrainerSettings
    tracking: TrackingSettings
    workspace: Path
    resolved: dict[str, Any]


def assemble(cfg: DictConfig) -> Assembled:
    """Build the task (registry lookup + instantiated data source and encoder) and settings."""
    resolved: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    workspace = Path(cfg.workspace).expanduser().resolve()
    task_params = {k: v for k, v in resolved["task"].items() if k != "name"}
    task_cls = get_task(cfg.task.name)
    try:
        task = task_cls(source=instantiate(cfg.data), encoder=instantiate(cfg.model), **task_params)  # type: ignore[call-arg]
    except TypeError as err:
        raise ConfigError(
            f"task={cfg.task.name}: {err}. Check the keys of the task config."
        ) from err
    return Assembled(
        task=task,
        pipeline=PipelineSettings(
            resolved["run_name"], resolved["cv"]["n_folds"], resolved["seed"]
        ),
        trainer=TrainerSettings(**resolved["trainer"]),
        tracking=TrackingSettings(**resolved["logger"]),
        workspace=workspace,
        resolved=resolved,
    )
