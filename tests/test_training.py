"""Trainer settings: precision, processes (DDP), the launcher, idle OpenMP threads."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, TensorDataset

from modelcycle.config import ConfigError, assemble, compose_config, trainer_settings
from modelcycle.ranks import is_rank_zero
from modelcycle.training import (
    PRECISIONS,
    LaunchError,
    TrainerSettings,
    check_launch,
    fit,
)


def test_precision_defaults_to_fp32_and_takes_the_mixed_ones() -> None:
    assert TrainerSettings().precision == "32-true"
    assert compose_config([]).trainer.precision == "32-true"
    assert TrainerSettings(precision="bf16-mixed").precision == "bf16-mixed"


@pytest.mark.parametrize("value", ["bf16", "bf16-true", "16", "fp8"])
def test_an_unsupported_precision_names_the_key_and_the_valid_values(value: str) -> None:
    with pytest.raises(ValueError, match=r"trainer\.precision") as raised:
        TrainerSettings(precision=value)
    assert value in str(raised.value) and all(p in str(raised.value) for p in PRECISIONS)
    with pytest.raises(ConfigError, match=r"^trainer\.precision=.*32-true"):
        assemble(compose_config(["experiment=image_rice", f"trainer.precision={value}"]))


@pytest.mark.slow  # a fresh interpreter importing torch: about 10 s on a loaded 2-core machine
def test_the_command_makes_idle_openmp_threads_sleep_before_torch_loads() -> None:
    # OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the CLI must set it before that,
    # and it loads torch only where a command needs it.
    probe = (
        "import os, sys; import modelcycle.cli; loaded = 'torch' in sys.modules; "
        "import torch; print(loaded, os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert run.stdout.split() == ["False", "PASSIVE"]


LAUNCH_KEYS = (
    "RANK",
    "LOCAL_RANK",
    "GROUP_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "NODE_RANK",
)


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No torchrun or SLURM variables in this process's environment."""
    for key in [*LAUNCH_KEYS, *(k for k in os.environ if k.startswith("SLURM_"))]:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def torchrun_env(mp: pytest.MonkeyPatch, world: int, rank: int = 0) -> None:
    """The variables `torchrun --nproc_per_node=<world>` gives process `rank`."""
    values = {"TORCHELASTIC_RUN_ID": "test", "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world}
    values |= {"RANK": rank, "LOCAL_RANK": rank, "GROUP_RANK": 0}
    for key, value in (values | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599"}).items():
        mp.setenv(key, str(value))


def slurm_env(mp: pytest.MonkeyPatch, per_node: int, nodes: int, procid: int = 0) -> None:
    """The variables `srun` gives task `procid` of `sbatch --nodes=N --ntasks-per-node=D`."""
    values = {
        "SLURM_NTASKS": per_node * nodes,
        "SLURM_NTASKS_PER_NODE": per_node,
        "SLURM_NNODES": nodes,
        "SLURM_PROCID": procid,
        "SLURM_LOCALID": procid % per_node,
        "SLURM_NODEID": procid // per_node,
        "SLURM_JOB_NAME": "twins",
        "SLURM_JOB_ID": 1234,
        "SLURM_NODELIST": "node[1-2]" if nodes > 1 else "node1",
    }
    for key, value in values.items():
        mp.setenv(key, str(value))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"strategy": "fsdp"}, "trainer.strategy='fsdp'"),
        ({"devices": 0}, "trainer.devices=0"),
        ({"devices": "two"}, "trainer.devices='two'"),
        ({"num_nodes": 0}, "trainer.num_nodes=0"),
        ({"max_epochs": "abc"}, "trainer.max_epochs='abc': give a whole number >= 1"),
        ({"max_epochs": 0}, "trainer.max_epochs=0"),
        ({"min_epochs": -1}, "trainer.min_epochs=-1"),
        ({"patience": 2.5}, "trainer.patience=2.5"),
        ({"limit_train_batches": 1.5}, "trainer.limit_train_batches=1.5"),
        ({"limit_train_batches": 0}, "trainer.limit_train_batches=0"),
        ({"deterministic": "yes"}, "trainer.deterministic='yes': give true or false"),
    ],
)
def test_invalid_settings_name_the_key(values: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match="trainer") as err:
        trainer_settings(values)
    assert named in str(err.value)


def test_a_quick_run_below_min_epochs_is_allowed() -> None:
    """`trainer.max_epochs=2` with the default min_epochs (5): max_epochs wins, no error."""
    assert trainer_settings({"max_epochs": 2}).max_epochs == 2


def test_min_epochs_above_max_epochs_is_refused_only_when_given() -> None:
    overrides = ["trainer.min_epochs=50", "trainer.max_epochs=3"]
    with pytest.raises(ConfigError, match=r"trainer.min_epochs=50 is above trainer.max_epochs=3"):
        compose_config(overrides)
    with pytest.raises(ConfigError, match=r"min_epochs=12 is above trainer.max_epochs=10"):
        compose_config(
            ["experiment=image_rice", "trainer.max_epochs=10", "++trainer.min_epochs=12"]
        )
    # the experiment's own min_epochs (10) yields to a quick run's max_epochs
    assert compose_config(["experiment=image_rice", "trainer.max_epochs=1"]).trainer.min_epochs


def test_fit_caps_min_epochs_at_max_epochs_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = TrainerSettings(max_epochs=1, min_epochs=10, progress_bar=False)
    with caplog.at_level(logging.INFO, logger="modelcycle.training"), pytest.raises(ValueError):
        fit(_Failing(ValueError("stop")), None, settings, "val_auc", tmp_path, [])  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records]
    assert (
        "trainer.min_epochs=10 is above trainer.max_epochs=1: training runs at most 1 "
        in " ".join(said)
    )


def test_one_process_needs_no_launcher(no_launcher: pytest.MonkeyPatch) -> None:
    assert check_launch(TrainerSettings()) == "lightning"
    assert check_launch(TrainerSettings(devices=2, strategy="ddp")) == "lightning"


def test_several_nodes_need_a_launcher(no_launcher: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="torchrun --nnodes=N") as err:
        trainer_settings({"devices": 2, "num_nodes": 2})
    assert "srun" in str(err.value)


def test_torchrun_must_match_devices(no_launcher: pytest.MonkeyPatch) -> None:
    torchrun_env(no_launcher, world=2)
    assert check_launch(TrainerSettings(devices=2, strategy="ddp")) == "torchrun"
    with pytest.raises(LaunchError, match=r"trainer.devices=1 .*world size \(2\)"):
        check_launch(TrainerSettings(devices=1))


def test_slurm_must_match_tasks_and_nodes(no_launcher: pytest.MonkeyPatch) -> None:
    slurm_env(no_launcher, per_node=2, nodes=2)
    assert check_launch(TrainerSettings(devices=2, num_nodes=2)) == "slurm"
    with pytest.raises(LaunchError, match="HINT: Set `devices=2`"):
        check_launch(TrainerSettings(devices=4, num_nodes=2))
    with pytest.raises(LaunchError, match="HINT: Set `num_nodes=2`"):
        check_launch(TrainerSettings(devices=2, num_nodes=1))


@pytest.mark.parametrize(
    ("launch", "environment"), [("torchrun", TorchElasticEnvironment), ("slurm", SLURMEnvironment)]
)
def test_lightning_takes_rank_and_world_from_the_launcher(
    no_launcher: pytest.MonkeyPatch, launch: str, environment: type
) -> None:
    """The Trainer the pipeline builds runs as rank 1 of 4 under either launcher."""
    no_launcher.setattr(rank_zero_only, "rank", 0)  # restored: the Trainer moves it to 1
    if launch == "torchrun":
        torchrun_env(no_launcher, world=4, rank=1)
        settings = TrainerSettings(devices=4, strategy="ddp")
    else:
        slurm_env(no_launcher, per_node=2, nodes=2, procid=1)
        settings = TrainerSettings(devices=2, strategy="ddp", num_nodes=2)
    check_launch(settings)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=settings.devices,
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        logger=False,
    )
    assert isinstance(trainer.strategy.cluster_environment, environment)  # type: ignore[attr-defined]
    assert (trainer.global_rank, trainer.world_size) == (1, 4)
    assert not is_rank_zero()


class _Failing(L.LightningModule):
    """A one-weight model whose first training step raises `error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        raise self.error

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


@pytest.mark.parametrize(
    ("error", "seen"),
    [
        (ValueError("dropout probability has to be between 0 and 1"), ValueError),
        (KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
@pytest.mark.parametrize(
    "before",
    [signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL],
    ids=["a terminal", "nohup or cmd &", "no handler"],
)
def test_fit_lets_an_error_through_and_reports_ctrl_c_as_one(
    tmp_path: Path, error: BaseException, seen: type[BaseException], before: object
) -> None:
    """Lightning marks the trainer interrupted on any error; only Ctrl-C may read as one."""
    settings = TrainerSettings(max_epochs=1, min_epochs=0, progress_bar=False)
    handler = signal.signal(signal.SIGINT, before)  # type: ignore[arg-type]
    try:
        with pytest.raises(seen) as raised:
            fit(_Failing(error), None, settings, "val_auc", tmp_path, [])  # type: ignore[arg-type]
        assert raised.type is seen  # not a KeyboardInterrupt standing in for the error
        # Lightning ignores Ctrl-C from its first on; the handler before the fit is back (a
        # second Ctrl-C stops the command again; a process started deaf stays so)
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGINT, handler)


class _DroppedCtrlC(L.LightningModule):
    """A one-weight model whose third step gets a Ctrl-C whose KeyboardInterrupt is dropped,
    as Python drops one raised inside a garbage-collection callback ("Exception ignored")."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps = 0

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        self.steps += 1
        if self.steps == 3:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(100):  # the handler runs between these bytecodes
                    time.sleep(0.01)
            except KeyboardInterrupt:
                pass  # dropped, as in a weakref callback
        loss = (self.weight - 1).pow(2).sum()
        self.log("train_loss", loss)  # what early stopping watches here
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


def test_a_ctrl_c_whose_interrupt_was_dropped_still_stops_the_fit(tmp_path: Path) -> None:
    # Seen in the Ctrl-C test: "Exception ignored in: <...InstanceState._cleanup...>
    # KeyboardInterrupt", and the command trained on to its last epoch.
    settings = TrainerSettings(max_epochs=50, min_epochs=50, patience=50, progress_bar=False)
    module = _DroppedCtrlC()
    # Python's own handler, as in a terminal: a process started in the background (CI under
    # nohup, `cmd &`) inherits SIGINT ignored, and then a fit has nothing to listen for.
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(module, None, settings, "train_loss", tmp_path, [])  # type: ignore[arg-type]
        assert module.steps == 3  # stopped at the next batch, not after 50 epochs
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)


#: A fit under a command's stop handlers whose logger gets SIGTERM in its third save, inside
#: a tracking-store write (a frame of SQLAlchemy), as MLflow's logger writes after each batch;
#: Lightning checks for SIGTERM right after. Prints what the fit raised, after which batch.
SIGTERM_IN_A_STORE_WRITE = """
import os, signal, sys, time
import lightning as L, torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset
from modelcycle.interrupts import ctrl_c_outside_store
from modelcycle.stop_signals import sigterm_as_ctrl_c
from modelcycle.training import TrainerSettings, fit

def in_store(function):
    namespace = {"__name__": "sqlalchemy.orm.session", "function": function}
    exec("def call():\\n    return function()\\n", namespace)
    return namespace["call"]()

class Store(Logger):
    saves = 0
    name = "store"
    version = "0"
    def log_hyperparams(self, params, *args, **kwargs): pass
    def log_metrics(self, metrics, step=None): pass
    def save(self):
        Store.saves += 1
        if Store.saves == 3:
            in_store(lambda: os.kill(os.getpid(), signal.SIGTERM))

class Learning(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.steps = 0
    def training_step(self, batch, batch_idx):
        self.steps += 1
        self.handler = signal.getsignal(signal.SIGTERM)
        loss = (self.weight - 1).pow(2).sum()
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
module = Learning()
settings = TrainerSettings(max_epochs=50, min_epochs=50, patience=50, progress_bar=False)
try:
    with sigterm_as_ctrl_c(), ctrl_c_outside_store():
        fit(module, None, settings, "train_loss", sys.argv[1], [Store()])
    print("finished")
except BaseException as err:
    print("raised", type(err).__name__, "after step", module.steps)
print("SIGTERM handled in the fit by:", getattr(module.handler, "__qualname__", module.handler))
time.sleep(0.5)  # a retry timer left running would fire here
print("alive")
"""


def test_sigterm_during_a_store_write_in_a_fit_stops_it_as_ctrl_c_does(tmp_path: Path) -> None:
    # Lightning's SIGTERM handler ended the fit as a SystemExit, and its teardown reset
    # SIGALRM under a stop waiting for a write to end: the process died of SIGALRM (-14),
    # seen once in the training stop test under load.
    run = subprocess.run(
        [sys.executable, "-c", SIGTERM_IN_A_STORE_WRITE, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    *_, raised, handled, alive = run.stdout.splitlines()
    assert raised.startswith("raised KeyboardInterrupt after step ") and alive == "alive"
    # Lightning's handler, set at each fit's start, is not the one a SIGTERM meets
    assert handled == "SIGTERM handled in the fit by: on_sigterm"
    assert int(raised.rpartition(" ")[2]) < 50  # stopped, not trained to its 100th step


class _Learning(L.LightningModule):
    """A one-weight model that learns 1; its loss is logged for early stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch: object, batch_idx: int) -> torch.Tensor:
        loss = (self.weight - 1).pow(2).sum()
        self.log("closeness", -loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


def test_the_best_epoch_is_said_by_its_number_not_a_scratch_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A sweep trial's checkpoints live in a scratch folder deleted when the trial ends, and
    # every fold's line named a file that no longer existed.
    settings = TrainerSettings(max_epochs=3, min_epochs=3, patience=3, progress_bar=False)
    with caplog.at_level(logging.INFO, logger="modelcycle.training"):
        fit(_Learning(), None, settings, "closeness", tmp_path, [])  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Best ")]
    assert len(said) == 1 and str(tmp_path) not in said[0], said
    # closeness only grows as the weight nears 1: the last epoch is the best
    assert re.fullmatch(r"Best closeness=-\d\.\d{4} at epoch 3 of 3", said[0]), said


def test_after_a_fit_ctrl_c_is_pythons_own_again(tmp_path: Path) -> None:
    settings = TrainerSettings(max_epochs=1, min_epochs=1, progress_bar=False)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        fit(_DroppedCtrlC(), None, settings, "train_loss", tmp_path, [])  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)


def test_a_fit_started_deaf_to_ctrl_c_stays_so(tmp_path: Path) -> None:
    settings = TrainerSettings(max_epochs=1, min_epochs=1, progress_bar=False)
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)  # `cmd &`, nohup
    try:
        fit(_DroppedCtrlC(), None, settings, "train_loss", tmp_path, [])  # type: ignore[arg-type]
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, handler)


def test_a_retired_process_observer_does_not_kill_rank_zero_when_ranks_end() -> None:
    # Rank zero ends the ranks itself at a Ctrl-C; Lightning's observer then SIGKILLed rank
    # zero (here a stand-in process) at its next poll, before it had marked its runs KILLED.
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    from modelcycle.training import retire_process_observers

    def observed(retire: bool) -> int | None:
        main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        observer = _ChildProcessObserver(main.pid, [rank], sleep_period=1)
        observer.start()
        try:
            if retire:
                retire_process_observers()
            rank.kill()  # as rank zero's Ctrl-C handler ends the ranks
            rank.wait()
            observer.join(timeout=5)
            assert not observer.is_alive()
            try:
                return main.wait(timeout=3)  # a SIGKILL takes a moment to be reaped
            except subprocess.TimeoutExpired:
                return None
        finally:
            main.kill()
            main.wait()

    assert observed(retire=False) == -signal.SIGKILL  # what happened without it
    assert observed(retire=True) is None  # rank zero lives on to say so and mark its runs


class _Squares(L.LightningModule):
    """A linear layer that logs its loss to the progress bar."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], _: int) -> torch.Tensor:
        loss = self.linear(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)


def test_the_progress_bar_counts_epochs_from_one_and_hides_the_logger_version(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    from modelcycle.training import EpochsFromOne

    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[EpochsFromOne()],
        logger=CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(_Squares())
    shown = capfd.readouterr().out
    assert "Epoch 3/3" in shown and "loss" in shown, shown  # Lightning's read "Epoch 2/2"
    assert "v_num" not in shown and "Epoch 2/2" not in shown
