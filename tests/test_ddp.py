"""Two CPU processes (DDP, gloo) train the tiny twins run: one report, one MLflow run tree.

Both launch paths are exercised for real, in subprocesses with a time limit: Lightning's own
launcher (`modelcycle train trainer.devices=2`) and torchrun.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from modelcycle.config import assemble, compose_config
from run_tree import one_run_tree

REPO = Path(__file__).resolve().parents[1]
TINY = ["debug=tiny", "trainer.max_epochs=3", "trainer.devices=2", "trainer.strategy=ddp"]
pytestmark = pytest.mark.slow


def launch(command: list[str], workspace: Path) -> subprocess.CompletedProcess[str]:
    """Run `command` with a clean launcher environment; fail the test past 10 minutes."""
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM")}
    env |= {"PYTHONPATH": str(REPO / "src"), "MODELCYCLE_HOME": str(workspace)}
    done = subprocess.run(
        command, env=env, cwd=workspace.parent, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def finite_summary(workspace: Path) -> dict[str, object]:
    """The one report of the workspace, with every model and baseline number finite."""
    reports = list((workspace / "reports").glob("twins-*"))
    assert len(reports) == 1
    summary: dict[str, object] = json.loads((reports[0] / "summary.json").read_text())
    folds = summary["folds"]
    assert isinstance(folds, list) and len(folds) == 2
    values = [v for f in folds for scorer in ("model", "baseline") for v in f[scorer].values()]
    assert values and all(math.isfinite(v) for v in values)
    assert (reports[0] / "model").is_dir() and (reports[0] / "fold1_roc.png").is_file()
    return summary


def test_cli_train_on_two_processes(tiny_qtim: Path, tmp_path: Path) -> None:
    """Lightning starts the second process, which re-runs the command as rank 1."""
    workspace = tmp_path / "ws"
    command = [sys.executable, "-m", "modelcycle", "train", f"data.root={tiny_qtim}", *TINY]
    done = launch(command, workspace)
    assert done.stdout.count("model vs baseline") == 1  # rank 1 prints nothing
    assert "sync_dist" not in done.stderr  # every epoch-level metric is reduced over ranks
    finite_summary(workspace)
    runs = one_run_tree(workspace)
    fold0 = next(r for r in runs if r.info.run_name == "twins-fold0")
    history = mlflow.MlflowClient().get_metric_history(fold0.info.run_id, "val_auc")
    assert 1 <= len(history) <= 3 and all(math.isfinite(m.value) for m in history)


def test_torchrun_ranks_return_the_same_result(tiny_qtim: Path, tmp_path: Path) -> None:
    """Under torchrun each rank runs the pipeline; both return rank zero's numbers."""
    workspace, out = tmp_path / "ws", tmp_path / "out"
    out.mkdir()
    script = str(REPO / "tests" / "ddp_rank_result.py")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        script,
    ]
    launch([*command, str(out), f"data.root={tiny_qtim}", *TINY], workspace)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    summary = finite_summary(workspace)
    assert [f["model"] for f in rank0["folds"]] == [f["model"] for f in summary["folds"]]  # type: ignore[attr-defined]
    runs = one_run_tree(workspace)
    assert rank0["run_id"] == next(r.info.run_id for r in runs if r.info.run_name == "twins")


def test_image_training_on_two_processes(tmp_path: Path) -> None:
    """The image task under DDP: validation accuracy from counts summed over both ranks.

    Each validation part has an odd number of images, which Lightning's default sampler
    would pad by repeating one; every logged accuracy must be a whole number of them.
    """
    workspace = tmp_path / "ws"
    overrides = ["experiment=image_rice", "data.synthetic=true", "data.image_size=32"]
    overrides += ["data.per_class_synthetic=21", "model.name=test_resnet"]
    overrides += ["trainer.max_epochs=2", "trainer.progress_bar=false", "task.held_out_rows=5"]
    command = [sys.executable, "-m", "modelcycle", "train", *overrides]
    done = launch([*command, "trainer.devices=2", "trainer.strategy=ddp"], workspace)
    assert "sync_dist" not in done.stderr
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["modelcycle"], output_format="list")
    assert len({r.info.run_name for r in runs}) == len(runs)  # rank 1 tracked nothing
    client = mlflow.MlflowClient()
    histories = [client.get_metric_history(r.info.run_id, "val_accuracy") for r in runs]
    trained = [[m.value for m in h] for h in histories if h]  # the fold's run and the final
    assert trained and all(1 <= len(h) <= 2 for h in trained), trained  # one value an epoch
    assert all(0 <= v <= 1 for h in trained for v in h), trained
    # The validation parts the run used, rebuilt in this process from the same config.
    a = assemble(compose_config([*overrides, f"workspace={workspace}"]))
    data, _ = a.task.load()
    run_name, seed = a.pipeline.run_name, a.pipeline.seed
    sizes = {
        f"{run_name}-fold{f.index}": len(f.val)
        for f in a.task.folds(data, a.pipeline.n_folds, seed)
    }
    sizes[f"{run_name}-final"] = len(a.task.final_fold(data, seed).val)
    assert all(n % 2 == 1 for n in sizes.values()), sizes  # padding would repeat one image
    checked = [
        (sizes[r.info.run_name], m.value) for r, h in zip(runs, histories, strict=True) for m in h
    ]
    for images, accuracy in checked:  # correct / images, nothing counted twice or missed
        assert abs(accuracy * images - round(accuracy * images)) < 1e-4, (images, accuracy)
    assert any(0 < v < 1 for _, v in checked), checked  # 0 and 1 fit any count


def ranks_started_by(pid: int) -> list[int]:
    """The processes whose parent is `pid` and that run modelcycle, from /proc.

    Not any child: imports and set-up start short-lived helpers too (seen: one caught in the
    first seconds, long before Lightning started rank 1).
    """
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == pid and b"modelcycle" in command:
            found.append(int(stat.parent.name))
    return found


def said_so_far(log: Path) -> str:
    """The log's words so far, one space apart: the log handler wraps long lines."""
    return " ".join(log.read_text(errors="replace").split())


@pytest.mark.parametrize("when", ["rank 1 is starting", "both ranks are fitting"])
def test_ctrl_c_stops_both_processes_and_rank_zero_says_so(
    when: str, real_qtim: Path, tmp_path: Path
) -> None:
    """A terminal's Ctrl-C (SIGINT to the process group), early and late.

    Every process gets it; rank 0 says so once, marks the runs KILLED and exits 130. Early,
    Lightning's second process is still importing: it died of the Ctrl-C with a traceback,
    and Lightning's watcher then SIGKILLed rank 0 (exit -9, runs left RUNNING). It now
    starts deaf to Ctrl-C until the ranks have met, and rank 0 ends it.
    """
    workspace = tmp_path / "ws"
    launcher = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
    env = {k: v for k, v in os.environ.items() if k not in launcher and not k.startswith("SLURM")}
    env |= {"PYTHONPATH": str(REPO / "src"), "MODELCYCLE_HOME": str(workspace)}
    command = [sys.executable, "-m", "modelcycle", "--verbose", "train", f"data.root={real_qtim}"]
    command += ["trainer.devices=2", "trainer.max_epochs=100000", "trainer.patience=100000"]
    command += ["trainer.progress_bar=false"]
    log = tmp_path / "train.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, as a shell's foreground job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            if when == "rank 1 is starting" and ranks_started_by(process.pid):
                time.sleep(1.0)  # importing torch, for several seconds on 2 cores
                assert "MEMBER: 2/2" not in said_so_far(log)
                break
            # (--verbose shows Lightning's line for rank 1 joining: both are then in fit)
            if when == "both ranks are fitting" and "MEMBER: 2/2" in said_so_far(log):
                time.sleep(3.0)  # well into the first epochs
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    said = log.read_text()
    assert code == 130, said[-3000:]
    assert said.count("interrupted: stopped at Ctrl-C") == 1
    assert "Traceback" not in said and "frame #" not in said, said[-3000:]  # nor C++ traces
    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs and all(r.info.status == "KILLED" for r in runs), [r.info.status for r in runs]
