"""How every modelcycle process logs: one rich line per record on stderr."""

from __future__ import annotations

import logging

#: Libraries whose INFO lines (Lightning's start-up banners and tips, the HTTP client's line
#: per request, MLflow creating its tables in a new workspace, in a format of its own, timm's
#: three lines per pretrained load where the image task logs one) say nothing about the run.
CHATTY = ("lightning.pytorch", "lightning.fabric", "httpx", "mlflow.store.db.utils", "timm")


def configure(level: int, verbose: bool = False, prefix: str = "") -> None:
    """Log records at `level` and above to stderr; `prefix` starts each message.

    Args:
        level: The root level (DDP ranks other than zero pass WARNING: only their warnings
            are news on a shared terminal).
        verbose: DEBUG, the chatty libraries' INFO lines included.
        prefix: Tells processes apart that share a terminal, e.g. a server's workers.
    """
    from rich.console import Console
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format=f"{prefix}%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
        force=True,
    )
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
