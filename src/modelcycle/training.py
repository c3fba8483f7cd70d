"""Build a Lightning Trainer from typed settings and fit one model, keeping its best weights."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import Logger

from modelcycle.interrupts import when_outside_store
from modelcycle.kinds import is_number, is_whole
from modelcycle.logs import quiet_libraries
from modelcycle.stop_signals import on_sigterm

log = logging.getLogger(__name__)

#: Lightning precisions that keep the weights in fp32 (so exports stay fp32): full fp32, or
#: autocast to bfloat16 (CPUs and GPUs) or float16 (GPUs) in the forward and backward passes.
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: Strategies the pipeline runs under: one process, or DDP (gloo on CPU, NCCL on GPUs).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


@dataclass(frozen=True)
class TrainerSettings:
    """How to train: epochs, early stopping, processes and what the console shows.

    Attributes:
        devices: Processes (devices) per node; more than one runs DDP.
        strategy: One of `STRATEGIES`; "auto" picks DDP when there is more than one process.
        num_nodes: Machines; more than one needs a launcher that starts every node
            (torchrun or SLURM's srun).
    """

    max_epochs: int = 100
    min_epochs: int = 5
    patience: int = 15
    accelerator: str = "cpu"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    deterministic: bool = True
    progress_bar: bool = True
    limit_train_batches: float | int = 1.0
    precision: str = "32-true"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision={self.precision!r} is not supported; use one of "
                f"{', '.join(PRECISIONS)} (mixed precisions keep fp32 weights for export)."
            )
        if self.strategy not in STRATEGIES:
            raise ValueError(
                f"trainer.strategy={self.strategy!r} is not supported: use one of "
                f"{', '.join(STRATEGIES)} (several processes run DDP)."
            )
        if isinstance(self.devices, bool) or (isinstance(self.devices, int) and self.devices < 1):
            raise ValueError(
                f"trainer.devices={self.devices!r}: give a number of devices >= 1 or 'auto'."
            )
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"trainer.devices={self.devices!r}: give a whole number or 'auto'.")
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ValueError(f"trainer.num_nodes={self.num_nodes!r}: give a whole number >= 1.")
        for key, least in (("max_epochs", 1), ("min_epochs", 0), ("patience", 1)):
            value = getattr(self, key)
            if not is_whole(value) or value < least:
                raise ValueError(f"trainer.{key}={value!r}: give a whole number >= {least}.")
        batches = self.limit_train_batches
        if not is_number(batches) or batches <= 0 or (isinstance(batches, float) and batches > 1):
            raise ValueError(
                f"trainer.limit_train_batches={batches!r}: give a share in (0, 1] or a whole "
                "number of batches >= 1."
            )
        for key in ("deterministic", "progress_bar"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"trainer.{key}={getattr(self, key)!r}: give true or false.")


def fit(
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    settings: TrainerSettings,
    monitor: str,
    checkpoint_dir: Path,
    loggers: list[Logger],
) -> Path:
    """Train with early stopping on `monitor` (higher is better) and restore the best epoch.

    Under DDP, Lightning saves the checkpoint on rank zero in rank zero's `checkpoint_dir`,
    and only rank zero loads it back: the other ranks take part in training only.

    Returns:
        The checkpoint of the best validation epoch; `module` holds its weights on return.
    """
    # Weights only: the optimizer state would triple what every improving epoch writes.
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
    )
    min_epochs = settings.min_epochs
    if min_epochs > settings.max_epochs:  # an experiment's own, below a quick run's max_epochs
        log.info(
            "trainer.min_epochs=%d is above trainer.max_epochs=%d: training runs at most %d "
            "epoch(s)",
            min_epochs,
            settings.max_epochs,
            settings.max_epochs,
        )
        min_epochs = settings.max_epochs
    ctrl_c = _CtrlC()
    quiet_libraries()  # Lightning, imported after logging was set up, set levels of its own
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        min_epochs=min_epochs,
        accelerator=settings.accelerator,
        devices=settings.devices,
        precision=settings.precision,  # type: ignore[arg-type]
        strategy=settings.strategy,
        num_nodes=settings.num_nodes,
        deterministic=settings.deterministic,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        limit_train_batches=settings.limit_train_batches,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        logger=loggers or False,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor=monitor, mode="max", patience=settings.patience),
            ctrl_c,
            *([EpochsFromOne()] if settings.progress_bar else []),
        ],
    )
    # Lightning may substitute one (16-mixed on a CPU runs as bf16-mixed): log what it runs.
    log.info("Training precision: %s (trainer.precision=%s)", trainer.precision, settings.precision)
    ctrl_c.listen()
    _start_ranks_deaf_to_ctrl_c(trainer)
    try:
        trainer.fit(module, datamodule=datamodule)
    except BaseException:
        # Lightning marks the trainer "interrupted" on any error, so ask what it caught. A
        # rank zero that heard the Ctrl-C has ended the other ranks: the collective it was
        # in (early stopping's) may then fail first, with gloo's error.
        if not (ctrl_c.pressed or ctrl_c.heard):
            raise
        # Lightning ends a Ctrl-C with exit(1) after its teardown, ignoring SIGINT from then
        # on (or with its loggers' error, when the teardown's write fails); the caller should
        # see the interruption itself, and a second Ctrl-C should work (`finally`).
        raise KeyboardInterrupt from None
    finally:
        ctrl_c.stop_listening()
    best = Path(checkpoint.best_model_path)
    if not trainer.is_global_zero:
        return best
    epoch = _load(module, best)
    # By epoch: the checkpoint's folder may be a scratch one, gone when a sweep trial ends.
    log.info(
        "Best %s=%.4f at epoch %d of %d",
        monitor,
        float(checkpoint.best_model_score or 0),
        epoch + 1,
        trainer.current_epoch,
    )
    log.debug("Best checkpoint: %s", best)
    return best


class EpochsFromOne(RichProgressBar):
    """Lightning's rich progress bar, with epochs counted as people count them.

    Lightning's reads "Epoch 29/29" for the last of 30 epochs and shows its logger's version
    (`v_num`, the MLflow run id's start) beside the loss; this one reads "Epoch 30/30" and
    leaves the version out.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            text += f"/{self.trainer.max_epochs}"
        width = len(self.validation_description)  # as Lightning pads it: no flicker
        return f"{text:{width}}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The bar's items without the logger's version."""
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


#: Set in the environment of the ranks Lightning starts while this process ignores SIGINT.
DEAF_TO_CTRL_C = "MODELCYCLE_RANK_STARTS_DEAF_TO_CTRL_C"


class _CtrlC(Callback):
    """Remember whether the exception that ended a fit was a KeyboardInterrupt.

    In a rank started deaf to Ctrl-C, hear it again once the ranks have met. And hear each
    Ctrl-C itself (`listen`): Python raises the KeyboardInterrupt wherever the main thread
    is, and when that is a garbage-collection callback (SQLAlchemy's, for one) the
    exception is printed as "Exception ignored in ..." and dropped, and training went on to
    its last epoch. A Ctrl-C heard but not seen by Lightning is raised again at the next
    batch. One that lands inside the tracking store (the MLflow logger's writes) is heard
    when the write is done (`modelcycle.interrupts`).
    """

    def __init__(self) -> None:
        self.pressed = False
        self.heard = False
        self.before: Any = None
        self.term: Any = None  # the command's SIGTERM handler, put back over Lightning's

    def listen(self) -> bool:
        """Hear Ctrl-C through `hear`, once out of the tracking store; whether it does.

        Only on the main thread and where Ctrl-C has a Python handler (Python's own, or the
        command's): a process started deaf to it stays so.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        self.before = signal.getsignal(signal.SIGINT)
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # a command's: keep it in the fit
            self.term = on_sigterm
        if not callable(self.before):
            return False
        signal.signal(signal.SIGINT, when_outside_store(self.hear))
        return True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Give SIGTERM back to the command, from the handler Lightning set just before.

        Lightning's handler ends a fit as a silent SystemExit (exit 0, the runs FAILED), and
        its teardown resets every signal, SIGALRM too: a stop held until a store write was
        done then killed the process by SIGALRM. The command's handler stops a fit as
        Ctrl-C does (`modelcycle.stop_signals`); elsewhere Lightning's is left in place.
        """
        if self.term is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.term)

    def stop_listening(self) -> None:
        """Give Ctrl-C back the handler it had before `listen` (Lightning ignores it at one)."""
        if self.before is not None:
            signal.signal(signal.SIGINT, self.before)
            self.before = None

    def hear(self, signum: int, frame: FrameType | None) -> Any:
        """The SIGINT handler during a fit: remember the press, then raise as Python does."""
        self.heard = True
        raise KeyboardInterrupt

    def _raise_if_dropped(self) -> None:
        if self.heard and not self.pressed:
            raise KeyboardInterrupt

    def on_train_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Raise a Ctrl-C heard whose KeyboardInterrupt never reached Lightning."""
        self._raise_if_dropped()

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        """Raise a Ctrl-C heard whose KeyboardInterrupt never reached Lightning."""
        self._raise_if_dropped()

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Raise a Ctrl-C heard whose KeyboardInterrupt never reached Lightning."""
        self._raise_if_dropped()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Lightning calls this after the process group is up: the rank can leave now.
        deaf = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        if os.environ.pop(DEAF_TO_CTRL_C, None) and deaf:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self.pressed = self.pressed or isinstance(exception, KeyboardInterrupt)


def _start_ranks_deaf_to_ctrl_c(trainer: L.Trainer) -> None:
    """Have Lightning's launcher start ranks 1.. ignoring SIGINT until they join (`_CtrlC`).

    A terminal's Ctrl-C reaches every process of the group. A rank still importing died of
    it with a traceback, and Lightning's watcher thread then SIGKILLed rank zero, which left
    its tracked runs RUNNING. A signal ignored at exec stays ignored in the new process, so
    the new ranks start deaf; rank zero, which hears the Ctrl-C, ends them (Lightning does
    after its teardown; this does it first, since a rank still meeting the others printed a
    page of C++ trace when rank zero's unwinding closed their store under it).
    """
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    spawn = getattr(launcher, "_call_children_scripts", None)
    if (
        not isinstance(launcher, _SubprocessScriptLauncher)
        or spawn is None
        or threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # deaf already: left as it is
    ):
        return

    def spawn_deaf() -> None:
        heard = signal.signal(signal.SIGINT, signal.SIG_IGN)  # for the few ms of the starts
        os.environ[DEAF_TO_CTRL_C] = "1"
        try:
            spawn()
        finally:
            del os.environ[DEAF_TO_CTRL_C]
            signal.signal(signal.SIGINT, when_outside_store(end_ranks_then(heard)))

    def end_ranks_then(heard: Any) -> Callable[[int, FrameType | None], Any]:
        def on_ctrl_c(signum: int, frame: FrameType | None) -> Any:
            retire_process_observers()  # else it answers the ranks' end by killing this one
            launcher.kill(signal.SIGKILL)
            if callable(heard):
                return heard(signum, frame)
            raise KeyboardInterrupt

        return on_ctrl_c

    launcher._call_children_scripts = spawn_deaf  # type: ignore[method-assign]


def retire_process_observers() -> None:
    """Stop Lightning's child-process observers from acting on the ranks' end.

    The observer (a thread of rank zero) polls the ranks every 5 s and, when one has died,
    SIGKILLs every rank and rank zero itself. Rank zero ends the ranks itself at a Ctrl-C; if
    the observer's next poll came before rank zero had finished (marking its runs KILLED),
    rank zero died with -9 and said nothing. An observer with no ranks to watch finishes at
    its next poll.
    """
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver):
            thread._child_processes = []


def restore(module: L.LightningModule, checkpoint: Path) -> L.LightningModule:
    """Load a Lightning checkpoint's weights into `module` (on the CPU); returns it."""
    _load(module, checkpoint)
    return module


def _load(module: L.LightningModule, checkpoint: Path) -> int:
    """Load a Lightning checkpoint's weights into `module`; the epoch it was saved at (0-based)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.load_state_dict(saved["state_dict"])
    return int(saved["epoch"])


class LaunchError(ValueError):
    """The trainer settings do not match the processes the launcher started."""


def _check_accelerator(accelerator: str) -> None:
    """An accelerator this machine has; Lightning said so only once the first fit started."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    if accelerator == "auto":
        return
    known = AcceleratorRegistry.available_accelerators()
    if not isinstance(accelerator, str):
        raise LaunchError(
            f"trainer.accelerator={accelerator!r}: use one of {', '.join(sorted(known))}, gpu "
            "or auto."
        )
    names = ("cuda", "mps") if accelerator == "gpu" else (accelerator,)  # Lightning's alias
    if not set(names) <= known:
        choices = ", ".join(sorted(known | {"auto", "gpu"}))
        raise LaunchError(f"trainer.accelerator={accelerator!r}: use one of {choices}.")
    if not any(AcceleratorRegistry[n]["accelerator"].is_available() for n in names):
        raise LaunchError(
            f"trainer.accelerator={accelerator}: this machine has none. Use cpu, or auto for "
            "the best it has."
        )


def check_launch(settings: TrainerSettings) -> str:
    """Check the settings against the launcher that started this process, before any work.

    Lightning itself checks this only when the first fit starts, after data loading and
    tracking have begun; here a mismatch stops the run at once.

    Returns:
        The launcher: "torchrun", "slurm" or "lightning" (Lightning starts the processes).

    Raises:
        LaunchError: The launcher's process count differs from devices × num_nodes, or
            several nodes were asked for without a launcher that starts them.
    """
    from lightning.fabric.plugins.environments import (
        ClusterEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    _check_accelerator(settings.accelerator)
    launchers: dict[str, type[ClusterEnvironment]] = {
        "torchrun": TorchElasticEnvironment,
        "slurm": SLURMEnvironment,
    }
    name = next((n for n, env in launchers.items() if env.detect()), "lightning")
    if name == "lightning":
        if settings.num_nodes > 1:
            raise LaunchError(
                f"trainer.num_nodes={settings.num_nodes} needs a launcher that starts a process "
                "per device on every node: `torchrun --nnodes=N --nproc_per_node=D -m modelcycle "
                "train ...` or `srun` in a SLURM job (see docs/scale-out.md)."
            )
        return name
    if isinstance(settings.devices, int):
        try:
            launchers[name]().validate_settings(settings.devices, settings.num_nodes)
        except (ValueError, RuntimeError) as err:
            raise LaunchError(
                f"The {name} launch does not match trainer.devices={settings.devices} and "
                f"trainer.num_nodes={settings.num_nodes}: {err} Set trainer.devices to the "
                "processes per node and trainer.num_nodes to the nodes."
            ) from err
    return name
