"""`serve.workers=2`: two real uvicorn workers share one socket and one /metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from server_process import (
    PREDICT_ROUTE,
    Server,
    Tally,
    examples,
    free_port,
    load,
    loading,
    metric_samples,
    serve_command,
    started,
    wait_for,
)
from serving_fixtures import ServedWorkspace

WORKER_STARTED = re.compile(r"worker (\d+): Started server process \[\1\]")


def worker_pids(server: Server, count: int, timeout: float = 150.0) -> list[int]:
    """Wait until `count` workers have finished start-up; their pids, newest last."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = " ".join(server.log.read_text(errors="replace").split())  # rich wraps lines
        if text.count("Application startup complete") >= count:
            return [int(pid) for pid in WORKER_STARTED.findall(text)]
        time.sleep(0.25)
    pytest.fail(f"{count} workers did not start within {timeout:.0f} s; {server.output()}")


def predictions_counted(server: Server) -> dict[str, float]:
    """modelcycle_requests_total of twins' predict route, by status, from one scrape."""
    return {
        labels["status"]: value
        for labels, value in metric_samples(server)["modelcycle_requests_total"]
        if labels["route"] == PREDICT_ROUTE and labels["model"] == "twins"
    }


@pytest.mark.slow
def test_two_workers_count_every_request_whichever_answers_the_scrape(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    port = free_port()
    # The installed command: its workers once died, unanswered, while importing the CLI.
    command = serve_command(served_workspace.root, port, "serve.workers=2", console_script=True)
    url, unbuffered = f"http://127.0.0.1:{port}", {"PYTHONUNBUFFERED": "1"}  # log lines now
    with started(command, tmp_path / "server.log", url, env=unbuffered) as server:
        first = worker_pids(server, 2)
        assert len(set(first)) == 2, server.output()
        # uvicorn's own lines in the project's format too, each worker's marked: they came in
        # uvicorn's ("INFO:     Started server process"), a worker's first line unmarked.
        assert "INFO:" not in server.log.read_text(errors="replace"), server.output()
        bodies, tally, sent = examples(server), Tally(), 200
        load(server, bodies, tally, threads=4, total=sent)
        assert tally.statuses == {200: sent}, f"{tally.errors[:3]}; {server.output()}"
        # Each scrape lands on either worker; every one must show the sum over both.
        for _ in range(8):
            assert predictions_counted(server) == {"200": sent}, server.output()

        # A worker killed outright is replaced; what it answered stays counted, and its
        # live gauges go: `ready` is that of the live workers only.
        os.kill(first[0], signal.SIGKILL)
        pids = worker_pids(server, 3)
        assert first[0] not in pids[2:], server.output()
        more = Tally()
        load(server, bodies, more, threads=4, total=50)
        assert more.statuses == {200: 50}, server.output()
        for _ in range(4):
            assert predictions_counted(server) == {"200": sent + 50}, server.output()
            samples = metric_samples(server)
            assert samples["modelcycle_ready"] == [({}, 1.0)]
            # the event loop's lag: one series, the most-behind live worker's
            [(labels, lag)] = samples["modelcycle_event_loop_lag_seconds"]
            assert labels == {} and 0 <= lag < 5, server.output()

        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the workers did not stop within 30 s of SIGTERM; {server.output()}")
    assert code == 0, f"SIGTERM should stop every worker and exit 0; {server.output()}"
    wal = served_workspace.root / "capture.db-wal"  # the workers' stores closed as they exited
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size


def reloads_swapped(server: Server) -> float:
    """modelcycle_reloads_total{outcome="swapped"} of twins, summed over the workers."""
    samples = metric_samples(server).get("modelcycle_reloads_total", [])
    return sum(v for labels, v in samples if labels == {"model": "twins", "outcome": "swapped"})


@pytest.mark.slow
def test_each_worker_hot_reloads_a_moved_alias_under_load(
    two_versions: ServedWorkspace, tmp_path: Path
) -> None:
    port = free_port()
    command = serve_command(two_versions.root, port, "serve.workers=2", "serve.reload_seconds=0.3")
    url, unbuffered = f"http://127.0.0.1:{port}", {"PYTHONUNBUFFERED": "1"}
    with started(command, tmp_path / "server.log", url, env=unbuffered) as server:
        pids = worker_pids(server, 2)
        bodies, tally = examples(server), Tally()
        with loading(server, bodies, tally):
            wait_for(lambda: tally.acks >= 50, 60, "50 answers before the move", server)
            assert reloads_swapped(server) == 0
            two_versions.registry.promote("twins", reason="move under load, two workers")
            wait_for(lambda: reloads_swapped(server) == 2, 60, "both workers to swap", server)
            settled = tally.acks
            wait_for(lambda: tally.acks >= settled + 50, 60, "50 answers after both swaps", server)
        info = metric_samples(server)["modelcycle_model_info"]
    assert tally.errors == [] and set(tally.statuses) == {200}, (tally.statuses, tally.errors)
    assert tally.versions == {"1", "2"}
    served = {labels["version"]: value for labels, value in info if labels["model"] == "twins"}
    assert served == {"1": 0.0, "2": 1.0}, served
    # Each worker says what it does, as one process does: spawned workers logged nothing
    # but warnings, so no line told when (or whether) a worker had swapped.
    said = " ".join(server.log.read_text(errors="replace").split())
    for pid in pids:
        assert f"worker {pid}: Ready: twins v1" in said, server.output()
        assert f"worker {pid}: twins@champion: version 1 → 2" in said, server.output()


def test_one_worker_is_still_the_default(served_workspace: ServedWorkspace) -> None:
    from modelcycle.config import compose_config, serve_config

    cfg = compose_config([f"workspace={served_workspace.root}"])
    assert serve_config(cfg).workers == 1


def test_bad_worker_count_names_the_key(served_workspace: ServedWorkspace) -> None:
    from modelcycle.config import ConfigError, compose_config, serve_config

    cfg = compose_config([f"workspace={served_workspace.root}", "serve.workers=0"])
    with pytest.raises(ConfigError, match=r"serve\.workers=0"):
        serve_config(cfg)
