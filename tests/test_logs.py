"""What a modelcycle process logs, and what it keeps quiet."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelcycle.logs import CHATTY, configure


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put back the root handlers and the chatty loggers' levels `configure` changes."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in CHATTY}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


def test_a_new_workspace_does_not_print_mlflows_table_creation(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    # The first run in a workspace printed two MLflow lines in a format of their own.
    from mlflow import MlflowClient

    configure(logging.INFO)
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_experiments()
    assert (tmp_path / "mlflow.db").is_file()
    assert "Creating initial MLflow database tables" not in capfd.readouterr().err
    logging.getLogger("modelcycle.test").info("a line of the run")
    assert "a line of the run" in capfd.readouterr().err


def test_verbose_lets_the_chatty_libraries_speak(restored_logging: None) -> None:
    configure(logging.INFO, verbose=True)
    assert all(logging.getLogger(name).isEnabledFor(logging.INFO) for name in CHATTY)
    configure(logging.INFO)
    assert not any(logging.getLogger(name).isEnabledFor(logging.INFO) for name in CHATTY)
