"""What a modelcycle process logs, and what it keeps quiet."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelcycle.logs import CHATTY, configure, handler


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


def test_workers_lines_are_marked_with_their_pid_and_the_supervisors_are_not() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "Started", None, None)
    alone = handler(supervisor=None).format(record)
    supervisor = handler(supervisor=os.getpid()).format(record)
    worker = handler(supervisor=os.getpid() + 1).format(record)  # started by another process
    assert alone == supervisor == "Started"
    assert worker == f"worker {os.getpid()}: Started"


def test_a_library_that_set_up_its_own_handler_speaks_through_ours(
    restored_logging: None,
) -> None:
    # Lightning gives its logger a plain handler and stops it propagating when it is imported
    # before logging is set up: its warnings then came in a format of their own.
    lightning = logging.getLogger("lightning.pytorch")
    own = logging.StreamHandler()
    handlers, propagate = lightning.handlers[:], lightning.propagate
    lightning.addHandler(own)
    lightning.propagate = False
    try:
        configure(logging.INFO)
        assert own not in lightning.handlers and lightning.propagate
        assert lightning.isEnabledFor(logging.WARNING) and not lightning.isEnabledFor(logging.INFO)
    finally:
        lightning.handlers[:], lightning.propagate = handlers, propagate


@pytest.mark.slow  # two tiny trainings in fresh interpreters: about 30 s
@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "--verbose"])
def test_lightning_loaded_after_logging_is_set_up_keeps_to_its_level(
    verbose: bool, tiny_qtim: Path, tmp_path: Path
) -> None:
    # The command imports Lightning only when it trains, after setting up logging; Lightning
    # then set its loggers to INFO with a handler of its own: every banner and tip came out,
    # twice, once as "INFO: ...".
    command = [sys.executable, "-m", "modelcycle", *(["--verbose"] if verbose else [])]
    command += ["train", f"data.root={tiny_qtim}", f"workspace={tmp_path}", "debug=tiny"]
    command += ["trainer.max_epochs=1", "trainer.progress_bar=false"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    said = run.stderr
    assert "Best val_auc" in said  # the run's own lines
    assert not [line for line in said.splitlines() if line.startswith(("INFO:", "WARNING:"))]
    # one Trainer per fold and one for the final model: each banner once per Trainer
    assert said.count("GPU available") == (3 if verbose else 0), said
