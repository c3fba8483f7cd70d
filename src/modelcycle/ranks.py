"""Which process of a multi-process (DDP) run this is, and what every rank must agree on.

Under DDP every process runs the whole command: each trains its shard of every fit, and
everything else (evaluation, reports, plots, MLflow runs, saving the model) happens once, on
global rank zero. The rank is known before any Trainer exists from the launcher's
environment (`RANK` from torchrun, `SLURM_PROCID` from srun, `LOCAL_RANK` from Lightning's
own launcher), which Lightning reads at import into `rank_zero_only.rank`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")
P = ParamSpec("P")

#: Where launchers put the rank, in the order Lightning reads them (LOCAL_RANK before
#: SLURM_PROCID, which SLURM sets even when it does not start the processes).
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank among all processes of the run (0 when there is only one).

    Lightning's record of it once Lightning is loaded (a Trainer corrects it, e.g. on a
    second node); before, what Lightning would read at import. Importing Lightning to know
    costs seconds, which a command that never trains (`--help`, `promote`) need not pay.
    """
    lightning = sys.modules.get("lightning.fabric.utilities.rank_zero")
    if lightning is not None:
        return int(getattr(lightning.rank_zero_only, "rank", 0))
    return next((int(os.environ[key]) for key in RANK_VARIABLES if key in os.environ), 0)


def is_rank_zero() -> bool:
    """True in the process that evaluates, writes and tracks (the only one without DDP)."""
    return global_rank() == 0


def rank_zero_only(method: Callable[P, None]) -> Callable[P, None]:
    """Run `method` on global rank zero only (elsewhere a call does nothing).

    Lightning's decorator of the same name, without importing Lightning to define it.
    """

    @functools.wraps(method)
    def on_rank_zero(*args: P.args, **kwargs: P.kwargs) -> None:
        if is_rank_zero():
            method(*args, **kwargs)

    return on_rank_zero


def share_from_rank_zero(value: T) -> T:
    """Rank zero's `value` on every rank, so all processes return the same result.

    A no-op without an initialized process group (one process, or before any DDP fit).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box: list[object] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def validation_loader(
    dataset: Dataset[Any], batch_size: int, num_workers: int, trainer: Any
) -> DataLoader[Any]:
    """Every validation sample in order; under DDP each process takes every n-th one.

    Lightning's default DistributedSampler pads a dataset to equal shares by repeating
    samples, which the validation metric (the early-stopping one) would then count twice.
    Unpadded, the shares differ by at most one sample, so the processes run the same number
    of batches or one fewer; validation logs reduce once per epoch, never per step, so no
    collective waits on the process with fewer. `trainer` is the datamodule's (or None).

    Raises:
        DataError: Fewer validation samples than processes, so one would validate nothing.
    """
    import torch
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
    from torch.utils.data import DataLoader

    from modelcycle.data.tables import DataError

    sampler = None
    if trainer is not None and trainer.world_size > 1:
        samples = len(dataset)  # type: ignore[arg-type]
        if samples < trainer.world_size:
            raise DataError(
                f"The validation part has {samples} sample(s), fewer than the "
                f"{trainer.world_size} training processes, and each must validate at least "
                "one: give it more (task.val_fraction) or train on fewer (trainer.devices)."
            )
        sampler = UnrepeatedDistributedSampler(
            dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),  # faster copies to a GPU; nothing to pin on CPU
    )
