"""How every modelcycle process logs: one rich line per record on stderr."""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

#: Libraries whose INFO lines (Lightning's start-up banners and tips, the HTTP client's line
#: per request, MLflow creating its tables in a new workspace, in a format of its own, timm's
#: three lines per pretrained load where the image task logs one) say nothing about the run.
CHATTY = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "httpx",
    "mlflow.store.db.utils",
    "timm",
)


def configure(level: int, verbose: bool = False) -> None:
    """Log records at `level` and above to stderr.

    Args:
        level: The root level (DDP ranks other than zero pass WARNING: only their warnings
            are news on a shared terminal).
        verbose: DEBUG, the chatty libraries' INFO lines included.
    """
    # Not dictConfig: besides the loggers it is given, it re-enables every logger a library
    # disabled and resets the children of those it configures (CPython bpo-44607).
    logging.basicConfig(level=logging.DEBUG if verbose else level, handlers=[handler()], force=True)
    quiet_libraries()


def settings(level: int, verbose: bool = False, supervisor: int | None = None) -> dict[str, Any]:
    """`configure`'s set-up as a `logging.config.dictConfig` dict, for uvicorn's workers.

    uvicorn applies it in each worker process it starts, before the worker logs its first
    line ("Started server process"), and in the process that starts them. With `supervisor`,
    that process's pid, the lines of every other process begin `worker PID: `: they share
    one terminal.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"rich": {"()": f"{__name__}.handler", "supervisor": supervisor}},
        "root": {"level": logging.DEBUG if verbose else level, "handlers": ["rich"]},
        # Through the root's handler: Lightning gives its loggers plain handlers of its own.
        "loggers": {name: {"level": _chatty_level(verbose), "propagate": True} for name in CHATTY},
    }


def quiet_libraries() -> None:
    """Apply the chatty libraries' levels again, after one of them set its own at import.

    Each command imports Lightning only if it trains, so after logging is set up; importing
    it sets its loggers to INFO and gives `lightning` a plain handler: without this its
    banners and tips printed twice, once in its own format. Verbose (their INFO and DEBUG
    lines kept) when the root logs DEBUG.
    """
    level = _chatty_level(logging.getLogger().isEnabledFor(logging.DEBUG))
    for name in CHATTY:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = True
        for own in logger.handlers[:]:
            logger.removeHandler(own)


def _chatty_level(verbose: bool) -> int:
    return logging.DEBUG if verbose else logging.WARNING


def handler(supervisor: int | None = None) -> logging.Handler:
    """A rich handler on stderr; `worker PID: ` starts each line unless this is `supervisor`."""
    from rich.console import Console
    from rich.logging import RichHandler

    worker = supervisor is not None and os.getpid() != supervisor
    rich = RichHandler(console=Console(stderr=True), show_path=False)
    rich.setFormatter(logging.Formatter(f"worker {os.getpid()}: %(message)s" if worker else None))
    return rich


#: Messages `warn_once` has logged in this process.
_WARNED: set[str] = set()


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log `message` as a warning the first time only.

    For faults every lookup would repeat: a broken plugin's entry point is read on each task
    or config lookup.
    """
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)
