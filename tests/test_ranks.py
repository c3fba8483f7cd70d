"""Rank-zero guards: what a non-zero rank of a DDP run does (train only) and does not do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch.utils.data import TensorDataset

from modelcycle.config import assemble, compose_config
from modelcycle.data.tables import DataError
from modelcycle.pipeline import run_pipeline
from modelcycle.ranks import global_rank, is_rank_zero, share_from_rank_zero, validation_loader
from modelcycle.tracking import Tracker, TrackingSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rank_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process plays global rank 1 (restored afterwards)."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)


@pytest.mark.parametrize("lightning", ["before Lightning loads", "Lightning loaded"])
@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4"}, 3),  # srun
        ({"RANK": "1", "LOCAL_RANK": "1"}, 1),  # torchrun
        ({"LOCAL_RANK": "1"}, 1),  # a child of Lightning's own launcher
        ({"LOCAL_RANK": "0", "SLURM_PROCID": "2"}, 0),  # SLURM_PROCID of an outer allocation
    ],
)
@pytest.mark.slow  # a fresh interpreter importing Lightning each
def test_rank_comes_from_the_launcher_environment(
    env: dict[str, str], rank: int, lightning: str
) -> None:
    """The rank is known at import, before any Trainer: the pipeline's guards rely on it.

    Before Lightning loads (a command that never trains) it is read as Lightning reads it.
    """
    launcher_keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")
    clean = {k: v for k, v in os.environ.items() if k not in launcher_keys}
    load = "import lightning.pytorch; " if lightning == "Lightning loaded" else ""
    code = (
        f"import sys; {load}from modelcycle.ranks import global_rank; "
        "print(global_rank(), 'lightning' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == [str(rank), str(bool(load))]


def test_rank_one_is_not_rank_zero(rank_one: None) -> None:
    assert global_rank() == 1 and not is_rank_zero()


def test_share_without_a_process_group_keeps_the_value() -> None:
    value = {"auc": 0.9}
    assert share_from_rank_zero(value) is value


def _share(rank: int, init_file: str, out: mp.Queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        out.put((rank, share_from_rank_zero({"from": rank, "metrics": [rank / 3]})))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters import torch and Lightning
def test_share_gives_every_rank_rank_zeros_value(tmp_path: Path) -> None:
    context = mp.get_context("spawn")
    queue = context.Queue()
    procs = mp.start_processes(
        _share, args=(str(tmp_path / "init"), queue), nprocs=2, join=False, start_method="spawn"
    )
    results = dict(queue.get(timeout=120) for _ in range(2))
    # join returns when one process ends, True once none is left
    assert any(procs.join(timeout=60) for _ in range(2))
    assert results == {0: {"from": 0, "metrics": [0.0]}, 1: {"from": 0, "metrics": [0.0]}}


def test_tracker_off_rank_zero_never_touches_the_store(rank_one: None, tmp_path: Path) -> None:
    tracker = Tracker(TrackingSettings(), tmp_path)
    with tracker.run("twins") as run_id:
        tracker.log_metrics({"auc": 0.5})
        tracker.log_params({"a": 1})
        tracker.set_tags({"task": "twins"})
        loggers = tracker.lightning_loggers(run_id, "fold0", "twins")
    assert run_id == "" and loggers == []
    assert not (tmp_path / "mlflow.db").exists()


def test_pipeline_off_rank_zero_trains_but_writes_and_tracks_nothing(
    rank_one: None, tiny_qtim: Path, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    cfg = compose_config(
        [
            f"data.root={tiny_qtim}",
            "debug=tiny",
            "trainer.max_epochs=1",
            f"workspace={tmp_path / 'ws'}",
            f"report_dir={report_dir}",
        ]
    )
    a = assemble(cfg)
    result = run_pipeline(
        a.task, a.pipeline, a.trainer, Tracker(a.tracking, a.workspace), a.workspace, a.resolved
    )
    # Every fit ran (a checkpoint per fold and for the final model) ...
    checkpoints = sorted(p.parent.name for p in report_dir.glob("checkpoints/*/best.ckpt"))
    assert checkpoints == ["final", "fold0", "fold1"]
    # ... but nothing after training: no evaluation, report, plots, model, or MLflow run.
    assert result.report.folds == [] and result.run_id == ""
    assert sorted(p.name for p in report_dir.iterdir()) == ["checkpoints"]
    assert not (tmp_path / "ws" / "mlflow.db").exists()


@pytest.mark.parametrize(("samples", "world"), [(7, 2), (10, 3), (2, 2), (6, 2)])
def test_validation_shares_cover_every_sample_once(samples: int, world: int) -> None:
    """Unpadded shares: no sample repeated (Lightning's default pads) and none left out."""
    dataset = TensorDataset(torch.arange(samples))
    seen: list[int] = []
    for rank in range(world):
        trainer = SimpleNamespace(world_size=world, global_rank=rank)
        share = [int(i) for (batch,) in validation_loader(dataset, 2, 0, trainer) for i in batch]
        assert share == list(range(rank, samples, world))  # in order, every n-th one
        seen += share
    assert sorted(seen) == list(range(samples))
    for alone in (SimpleNamespace(world_size=1, global_rank=0), None):  # one process
        loader = validation_loader(dataset, 4, 0, alone)
        assert [int(i) for (batch,) in loader for i in batch] == list(range(samples))


def test_fewer_validation_samples_than_processes_is_a_data_error() -> None:
    trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(DataError, match=r"2 sample\(s\), fewer than the 3 .*task.val_fraction"):
        validation_loader(TensorDataset(torch.arange(2)), 4, 0, trainer)
