"""Which process of a multi-process (DDP) run this is, and what every rank must agree on.

Under DDP every process runs the whole command: each trains its shard of every fit, and
everything else (evaluation, reports, plots, MLflow runs, saving the model) happens once, on
global rank zero. The rank is known before any Trainer exists from the launcher's
environment (`RANK` from torchrun, `SLURM_PROCID` from srun, `LOCAL_RANK` from Lightning's
own launcher), which Lightning reads at import into `rank_zero_only.rank`.
"""

from __future__ import annotations

from typing import TypeVar

from lightning.pytorch.utilities.rank_zero import rank_zero_only

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
