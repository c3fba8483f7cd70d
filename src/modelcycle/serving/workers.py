"""Several uvicorn worker processes behind one socket, with one /metrics for all of them.

Each worker is a whole server of its own: it composes the same config, loads the models,
micro-batches its own requests, watches the served aliases (hot reload) and runs its own
drift checks on the shared capture store (SQLite in WAL mode takes the concurrent writers).
The series of every worker live in a fresh directory (`PROMETHEUS_MULTIPROC_DIR`), so GET
/metrics answers the sum over all workers, whichever worker takes the scrape.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from fastapi import FastAPI

from modelcycle.logs import settings as log_settings
from modelcycle.serving.metrics import MULTIPROC_ENV

SPEC_ENV = "MODELCYCLE_SERVE_SPEC"  # what to serve, handed from the parent to its workers


def run_workers(
    references: Sequence[str],
    overrides: Sequence[str],
    host: str,
    port: int,
    workers: int,
    max_connections: int | None = None,
) -> None:
    """Serve with `workers` processes until SIGINT/SIGTERM; a finished graceful stop exits 0.

    uvicorn's supervisor restarts a worker that dies; a worker that cannot start stops all
    of them, and this process then exits with uvicorn's start-up failure code (3).
    """
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from modelcycle.serving.protocol import OpsFirstHttp

    with tempfile.TemporaryDirectory(prefix="modelcycle-metrics-") as directory:
        # Workers are spawned (fresh interpreters), so they see this environment before
        # prometheus-client is imported, which is when it picks its multi-process mode.
        os.environ[MULTIPROC_ENV] = directory
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)  # as this process logs
        os.environ[SPEC_ENV] = json.dumps(
            {"references": list(references), "overrides": list(overrides)}
        )
        config = uvicorn.Config(
            f"{__name__}:create_worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=10,
            access_log=False,
            limit_concurrency=max_connections,  # per worker
            http=OpsFirstHttp,  # health checks and scrapes pass it
            # Set up in each worker before its first line, so uvicorn's lines too read as
            # this project's, each worker's marked with its pid.
            log_config=log_settings(logging.INFO, verbose, supervisor=os.getpid()),
        )
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)


def create_worker_app() -> FastAPI:
    """The app of one worker, built from the spec its parent put in the environment."""
    from modelcycle.config import compose_config
    from modelcycle.serving.server import build_server

    spec = json.loads(os.environ[SPEC_ENV])
    app, _ = build_server(compose_config(spec["overrides"]), spec["references"])
    _before_stop_signals(app.state.stop_accepting)
    return app


def _before_stop_signals(on_stop: Callable[[], None]) -> None:
    """Run `on_stop` (readiness turns false) before uvicorn's own stop handling.

    uvicorn builds the app after installing its signal handlers, so they are there to chain.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            on_stop()
            previous(signum, frame)

        signal.signal(sig, handler)
