"""Assemble a server from config: registry, models to load, capture store, settings."""

from __future__ import annotations

import errno
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from omegaconf import DictConfig

from modelcycle.config import (
    ConfigError,
    ServeConfig,
    build_registry,
    monitor_config,
    serve_config,
)
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift_service import DriftService
from modelcycle.registry import NAME_RULE, Registry, StoreWatch, is_plain_name
from modelcycle.servable import ServableError, read_manifest
from modelcycle.serving.app import create_app
from modelcycle.serving.loading import (
    ModelLoadError,
    ServedModel,
    VariantChoice,
    expected_sha256,
    fetch_checked,
    load_served,
    split_alias,
    task_adapter,
)
from modelcycle.serving.protocol import OpsFirstHttp


def build_server(cfg: DictConfig, references: list[str]) -> tuple[FastAPI, ServeConfig]:
    """The app serving `references` (NAME@ALIAS) from the configured registry."""
    config = serve_config(cfg)
    registry = check_references(cfg, references)
    cache, threads, variant = config.cache_dir, config.settings.threads, config.variant

    def load() -> list[ServedModel]:
        return [load_served(registry, ref, cache, threads, variant) for ref in references]

    reload = alias_reloader(registry, cache, threads, variant)
    capture = CaptureStore(config.capture_path) if config.capture_path else None
    watch = monitor_config(cfg)
    drift = (
        DriftService(capture, watch.drift, watch.interval_seconds, watch.window)
        if capture is not None
        else None
    )
    app = create_app(load, config.settings, capture, reload, drift, close_capture=True)
    return app, config


def alias_reloader(
    registry: Registry, cache: Path, threads: int, variant: VariantChoice | None
) -> Callable[[ServedModel], ServedModel | None]:
    """What loads a served model's version anew once its alias moved (None while it stays).

    The registry is looked up only when its store may have been written (`StoreWatch`); a
    load that fails is tried again at the next look, not only once the store changes again.
    """
    store = StoreWatch(registry.uri)

    def reload(current: ServedModel) -> ServedModel | None:
        if not store.may_have_changed(current.name):  # nothing written: the alias stayed
            return None
        version = registry.alias_version(current.name, current.alias)
        if version is None or version == current.version:
            return None
        try:
            return load_served(registry, f"{current.name}@{current.alias}", cache, threads, variant)
        except Exception:
            store.forget(current.name)
            raise

    return reload


def served_url(host: str, port: int) -> str:
    """The address a browser opens: http://HOST:PORT/, an IPv6 host in brackets."""
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def check_references(cfg: DictConfig, references: list[str]) -> Registry:
    """The configured registry, once every reference in it is servable (ModelLoadError if not).

    The server's own files are checked first (ConfigError): where it copies the versions and
    where it captures must take writes.
    """
    config = serve_config(cfg)
    check_writable(config)
    registry, variant, cache = build_registry(cfg), config.variant, config.cache_dir
    for reference in references:  # fail here, in one clear line, not in the server's start-up
        check_servable(registry, reference, variant, cache)
    names = [reference.split("@", 1)[0] for reference in references]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ModelLoadError(
            f"{', '.join(twice)} named more than once ({' '.join(references)}): a server answers "
            "one alias per model name; serve the other alias from a second server."
        )
    return registry


def check_writable(config: ServeConfig) -> None:
    """Raise ConfigError unless the server can write its model copies and capture store.

    A workspace mounted read-only (a shared registry) ended the start in "Read-only file
    system" naming a folder, not the settings that move it.
    """
    cache = config.cache_dir
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=cache).close()
    except OSError as err:
        raise ConfigError(
            f"serve.cache_dir: {cache} cannot be written ({err.strerror or err}); the server "
            "keeps hash-checked copies of the versions it serves there. Give "
            "serve.cache_dir=A_WRITABLE_FOLDER (a workspace mounted read-only serves so, with "
            "serve.capture_path= or serve.capture=false)."
        ) from err
    store = config.capture_path
    if store is None:
        return
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=store.parent).close()  # SQLite writes its WAL beside it
        if store.exists():
            store.open("r+b").close()
    except OSError as err:
        raise ConfigError(
            f"serve.capture_path: {store} cannot be written ({err.strerror or err}). Give "
            "serve.capture_path=A_WRITABLE_FILE, or serve.capture=false to capture nothing."
        ) from err


def check_servable(
    registry: Registry,
    reference: str,
    variant: VariantChoice | None = None,
    cache: Path | None = None,
) -> None:
    """Raise ModelLoadError unless `reference` is NAME@ALIAS of a version that may serve.

    The variant is fp32 unless `variant` says int8, which must also pass its metric check.
    With `cache`, the version is also copied there and its ONNX hash-checked (files deleted
    or damaged in the registry ended the server's start-up in a traceback); the server's own
    load then reuses the copy.
    """
    name = split_alias(reference)[0]
    if not is_plain_name(name):  # registered before `register` kept names to the rule
        raise ModelLoadError(
            f"model name {name!r}: /v1/models/NAME/predict cannot carry it as it is; only "
            f"names of {NAME_RULE} are served. Register its run under such a name: "
            "`modelcycle register RUN_ID --name NEW_NAME`."
        )
    version = registry.resolve(reference)
    choice = variant or VariantChoice()
    expected_sha256(version, reference, choice)
    if task := version.tags.get("lineage.task"):
        task_adapter(task, reference)
    if cache is None:
        return
    local, _ = fetch_checked(registry, version, reference, cache, choice)
    try:
        read_manifest(local)
    except ServableError as err:  # the copy is the stored file's: name that one, and the way out
        name = version.name
        raise ModelLoadError(
            f"{err} It is a copy of {version.source}/manifest.json, {name} version "
            f"{version.version}'s: restore that file, or point the alias at another version "
            f"(`modelcycle promote {name} --version N --alias {reference.split('@', 1)[1]}`)."
        ) from err


class GracefulServer(uvicorn.Server):
    """uvicorn, but a stop signal turns readiness false before in-flight requests drain."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_stop = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Mark the app not ready, then let uvicorn stop accepting and finish what it has."""
        self.on_stop()
        super().handle_exit(sig, frame)


def check_address(host: str, port: int) -> None:
    """Bind `host:port` as uvicorn will, and let go, so a bad address is named early.

    A name that does not resolve, or a port another process holds, is named before any model
    loads; uvicorn would say so after, in its own words.

    Raises:
        ConfigError: Naming serve.host or serve.port and what to give instead.
    """
    refused = _bind_refused(host, port)
    if refused is not None:
        raise ConfigError(_bind_error(host, port, refused)) from refused


def _bind_refused(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be bound as uvicorn binds it now, or None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


def _free_port_near(host: str, port: int) -> int:
    """The first port after `port` that `host` can bind now (the next one was busy too)."""
    candidates = [*range(port + 1, min(port + 50, 65536)), *range(8000, 8050)]
    return next((c for c in candidates if _bind_refused(host, c) is None), 8000)


def _bind_error(host: str, port: int, err: OSError) -> str:
    where = f"cannot listen on {host}:{port} ({err.strerror})"
    if err.errno == errno.EADDRINUSE:
        return (
            f"serve.port={port}: {where}. Stop what holds it, or choose another port, e.g. "
            f"serve.port={_free_port_near(host, port)} (free now)."
        )
    if err.errno == errno.EACCES:
        return (
            f"serve.port={port}: {where}. Ports below 1024 need privileges; e.g. serve.port=8000."
        )
    return (
        f"serve.host={host!r}: {where}. Give an address of this machine: 127.0.0.1 for this "
        "machine only, 0.0.0.0 for every interface."
    )


#: How long a stop waits for the requests in flight (deploy/k8s: preStop + this < the grace).
GRACEFUL_SECONDS = 10


def run_server(app: FastAPI, host: str, port: int, max_connections: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM; a finished graceful stop exits 0.

    Beyond `max_connections` open connections (or requests in flight), uvicorn answers 503 at
    once without running the app: overload the event loop cannot keep up with is shed there.
    Health checks and scrapes still pass (`OpsFirstHttp`).
    """
    # uvicorn re-raises SIGTERM after its graceful shutdown, which would end a clean stop as
    # "killed by signal" (exit 143); the handler below is in place by then, so it exits 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # No access-log line per request: Prometheus counts requests, and the line costs CPU.
    # log_config=None: uvicorn's lines go through this process's handler, in its format.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACEFUL_SECONDS,
        access_log=False,
        log_config=None,
        limit_concurrency=max_connections,
        http=OpsFirstHttp,
    )
    GracefulServer(config, app.state.stop_accepting).run()
