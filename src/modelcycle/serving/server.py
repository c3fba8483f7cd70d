"""Assemble a server from config: registry, models to load, capture store, settings."""

from __future__ import annotations

from fastapi import FastAPI
from omegaconf import DictConfig

from modelcycle.config import ServeConfig, build_registry, serve_config, workspace_of
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.serving.app import create_app
from modelcycle.serving.loading import ServedModel, load_served, warm_up


def build_server(cfg: DictConfig, references: list[str]) -> tuple[FastAPI, ServeConfig]:
    """The app serving `references` (NAME@ALIAS) from the configured registry."""
    config = serve_config(cfg)
    registry = build_registry(cfg)
    cache = workspace_of(cfg) / "serving"
    threads = config.settings.threads

    def load() -> list[ServedModel]:
        return [load_served(registry, ref, cache, threads) for ref in references]

    def reload(current: ServedModel) -> ServedModel | None:
        version = registry.alias_version(current.name, current.alias)
        if version is None or version == current.version:
            return None
        fresh = load_served(registry, f"{current.name}@{current.alias}", cache, threads)
        warm_up(fresh)
        return fresh

    capture = CaptureStore(config.capture_path) if config.capture_path else None
    return create_app(load, config.settings, capture, reload), config
