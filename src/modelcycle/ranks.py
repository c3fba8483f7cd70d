"""Which process of a multi-process (DDP) run this is, and what every rank must agree on.

Under DDP every process runs the whole command: each trains its shard of every fit, and
everything else (evaluation, reports, plots, MLflow runs, saving the model) happens once, on
global rank zero. The rank is known before any Trainer exists from the launcher's
environment (`RANK` from torchrun, `SLURM_PROCID` from srun, `LOCAL_RANK` from Lightning's
own launcher), which Lightning reads at import into `rank_zero_only.rank`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")


def global_rank() -> int:
    """This process's rank among all processes of the run (0 when there is only one)."""
    return int(getattr(rank_zero_only, "rank", 0))


def is_rank_zero() -> bool:
    """True in the process that evaluates, writes and tracks (the only one without DDP)."""
    return global_rank() == 0


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
