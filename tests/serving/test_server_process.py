"""A real `modelcycle serve` process: concurrent load, SIGTERM and kill -9 under load.

Each test starts its own server on a free port against the shared `served_workspace`; the
capture store is shared too, so the tests compare capture counts before and after.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from modelcycle.serving.protocol import HEAD_LIMIT, HEAD_SECONDS, LINGER_SECONDS
from server_process import (
    PREDICT_ROUTE,
    Server,
    Tally,
    capture_count,
    examples,
    load,
    loading,
    metric_samples,
    running_server,
    wait_for,
)
from serving_fixtures import ServedWorkspace

pytestmark = pytest.mark.slow


def test_concurrent_load_is_answered_counted_and_batched(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    sent, bound = 300, 60.0
    with running_server(served_workspace.root, tmp_path / "server.log") as server:
        bodies, tally = examples(server), Tally()
        started = time.monotonic()
        load(server, bodies, tally, threads=8, total=sent)
        elapsed = time.monotonic() - started
        samples = metric_samples(server)

        assert not tally.errors, f"{tally.errors[:5]}; {server.output()}"
        assert tally.statuses == {200: sent}, server.output()
        assert tally.versions == {"1"}
        assert elapsed < bound, f"{sent} requests took {elapsed:.1f} s (bound {bound:.0f} s)"

        requests = {
            labels["status"]: value
            for labels, value in samples["modelcycle_requests_total"]
            if labels["route"] == PREDICT_ROUTE and labels["model"] == "twins"
        }
        assert requests == {"200": sent}
        twins = {"model": "twins"}
        batch_sum = [v for labels, v in samples["modelcycle_batch_size_sum"] if labels == twins]
        batch_count = [v for labels, v in samples["modelcycle_batch_size_count"] if labels == twins]
        assert batch_sum == [sent], "every prediction ran in exactly one batch"
        # Eight clients keep requests queued while a batch runs, so batches of more than one
        # form even with max_wait_ms=0 (observed: 115-175 batches for 300 requests).
        assert 1 <= batch_count[0] < sent, "no batch held more than one request"
        singles = [
            v
            for labels, v in samples["modelcycle_batch_size_bucket"]
            if labels["model"] == "twins" and float(labels["le"]) == 1.0
        ]
        print(  # visible with -s: how much batching eight clients produce
            f"{sent} requests in {elapsed:.2f} s: {batch_count[0]:.0f} batches, "
            f"{singles[0]:.0f} of size 1, mean size {sent / batch_count[0]:.2f}"
        )


def _load_then_signal(
    root: Path, log: Path, sig: signal.Signals, min_acks: int = 100
) -> tuple[Server, Tally, int]:
    """Run a load loop, send `sig` once `min_acks` requests are answered, return the exit."""
    with running_server(root, log) as server:
        bodies, tally = examples(server), Tally()
        with loading(server, bodies, tally) as loader:
            deadline = time.monotonic() + 30
            while tally.acks < min_acks and time.monotonic() < deadline and loader.is_alive():
                time.sleep(0.01)
            assert tally.acks >= min_acks, f"only {tally.acks} answers; {server.output()}"
            server.process.send_signal(sig)
            try:
                code = server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the server did not exit within 20 s of {sig.name}; {server.output()}")
        assert not loader.is_alive(), "the load threads did not stop"
    return server, tally, code


def test_sigterm_under_load_exits_cleanly_with_every_answer_captured(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    root = served_workspace.root
    before = capture_count(root)
    server, tally, code = _load_then_signal(root, tmp_path / "server.log", signal.SIGTERM)
    # the stopped server emptied its WAL into the database (it stayed at tens of MB)
    wal = root / "capture.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size

    captured = capture_count(root) - before
    print(f"SIGTERM: exit {code}, {tally.acks} answered, {captured} captured, {tally.statuses}")
    assert code == 0, f"SIGTERM should end the server cleanly (exit 0); {server.output()}"
    assert set(tally.statuses) == {200}, f"{tally.statuses}; {server.output()}"
    assert tally.versions == {"1"}
    assert captured >= tally.acks, f"{tally.acks} answered but only {captured} captured"


def test_kill_9_under_load_keeps_every_acknowledged_prediction(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    root = served_workspace.root
    before = capture_count(root)
    server, tally, code = _load_then_signal(root, tmp_path / "server.log", signal.SIGKILL)

    assert code == -signal.SIGKILL
    assert set(tally.statuses) == {200}, f"{tally.statuses}; {server.output()}"
    captured = capture_count(root) - before
    print(f"kill -9: exit {code}, {tally.acks} answered, {captured} captured")
    assert captured >= tally.acks, f"{tally.acks} answered but only {captured} captured"


def test_alias_move_under_load_swaps_versions_with_no_failed_request(
    two_versions: ServedWorkspace, tmp_path: Path
) -> None:
    """Promote version 2 while requests flow; the server hot-reloads it, nothing fails."""
    extra = ("serve.reload_seconds=0.3",)
    with running_server(two_versions.root, tmp_path / "serve.log", extra=extra) as server:
        bodies, tally = examples(server), Tally()
        with loading(server, bodies, tally):
            wait_for(lambda: tally.acks >= 50, 20, "50 answers before the move")
            two_versions.registry.promote("twins", reason="move under load")
            wait_for(lambda: "2" in tally.versions, 20, "an answer from version 2")
            settled = tally.acks
            wait_for(lambda: tally.acks >= settled + 50, 20, "50 answers after the move")
        reloads = metric_samples(server)["modelcycle_reloads_total"]
    assert tally.errors == [] and set(tally.statuses) == {200}, (tally.statuses, tally.errors)
    assert tally.versions == {"1", "2"}
    assert reloads == [({"model": "twins", "outcome": "swapped"}, 1.0)]


def test_connections_over_the_limit_get_503_at_once_but_probes_and_scrapes_pass(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    extra = ("serve.max_connections=2",)  # uvicorn counts the asking connection too
    with running_server(served_workspace.root, tmp_path / "server.log", extra=extra) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5):  # holds the one place
            time.sleep(0.2)  # let the server accept it
            started = time.monotonic()
            refused = httpx.get(server.url + "/v1/models", timeout=10)
            assert refused.status_code == 503, server.output()
            assert time.monotonic() - started < 5
            for _ in range(19):  # a small flood: counted one by one, logged once
                assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 503
            # An operator still sees the server while the limit holds: probes and a scrape.
            assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
            assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
            scrape = httpx.get(server.url + "/metrics", timeout=10)
            assert scrape.status_code == 200, scrape.text
            assert "modelcycle_refused_requests_total 20.0" in scrape.text
            assert httpx.post(server.url + "/healthz", timeout=10).status_code == 503
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 200:  # the held connection closed
            status = httpx.get(server.url + "/v1/models", timeout=10).status_code
            time.sleep(0.1)
        assert status == 200, server.output()
        counted = metric_samples(server)["modelcycle_refused_requests_total"]
    log = server.log.read_text()  # after a graceful stop, which sums what was not logged
    assert counted == [({}, 21.0)]  # the 20 GETs and the POST
    assert log.count("Refusing requests with 503: serve.max_connections") == 1, log
    assert "Refused 20 requests with 503" in log, log
    assert "Exceeded concurrency limit" not in log, log


def _raw_post(server: Server, headers: dict[str, str], body: bytes) -> socket.socket:
    """A predict request written by hand on a new connection, its body as given (partial)."""
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = [f"POST {PREDICT_ROUTE.replace('{name}', 'twins')} HTTP/1.1", f"Host: {host}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    return sock


def _response(sock: socket.socket) -> str:
    """One whole HTTP response read off `sock` (head and body may come in separate reads)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _trickled_until_closed(sock: socket.socket, seconds: float) -> bool:
    """Send `sock` a byte a second until the server closes it (True) or `seconds` pass."""
    sock.settimeout(1.0)
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        try:
            sock.sendall(b" ")
            if sock.recv(1) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionError:
            return True
    return False


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").lower()
    found = re.search(r"content-length: (\d+)", head)
    return int(found[1]) if found else 0


def test_a_slow_or_vanished_body_is_a_4xx_not_a_held_connection_or_a_500(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # A body that never completes held its connection until the client gave up (a slowloris
    # could fill serve.max_connections); a client gone mid-body logged an ASGI traceback and
    # counted as a 500, which the 5xx alert reads.
    with running_server(served_workspace.root, tmp_path / "server.log") as server:
        partial = {"Content-Type": "application/json", "Content-Length": "100"}
        started = time.monotonic()
        with _raw_post(server, {**partial, "X-Deadline-Ms": "800"}, b'{"a": ') as sock:
            answer = _response(sock)
            answered = time.monotonic()
            # the rest of the body, a byte a second (under uvicorn's 5 s keep-alive timeout),
            # held the connection for good after its 408
            assert _trickled_until_closed(sock, seconds=LINGER_SECONDS + 5)
        assert answer.startswith("HTTP/1.1 408"), answer
        assert "did not arrive within" in answer
        assert answered - started < 5  # the deadline, not the client, ended it
        assert time.monotonic() - answered < LINGER_SECONDS + 2

        _raw_post(server, partial, b'{"a": ').close()  # gone before its body arrived
        time.sleep(1.0)
        counted = {
            labels["status"]
            for labels, _ in metric_samples(server)["modelcycle_requests_total"]
            if labels["route"] == PREDICT_ROUTE
        }
        assert "500" not in counted and {"408", "499"} <= counted, counted
    log = server.log.read_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log, log


def test_connections_that_never_finish_their_head_give_their_places_back(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    # uvicorn kept a connection whose head never ended for good, and counted it toward
    # serve.max_connections: four of them and every other request was answered 503.
    extra = ("serve.max_connections=4",)
    with running_server(served_workspace.root, tmp_path / "server.log", extra=extra) as server:
        host, port = server.url.removeprefix("http://").split(":")
        address = (host, int(port))
        stuck = [socket.create_connection(address, timeout=HEAD_SECONDS + 10) for _ in range(4)]
        started = time.monotonic()
        for sock in stuck:
            sock.sendall(f"POST /v1/models/twins/predict HTTP/1.1\r\nHost: {host}\r\n".encode())
        time.sleep(0.5)
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 503  # full
        answers = [_response(sock) for sock in stuck]
        waited = time.monotonic() - started
        for sock in stuck:
            sock.close()
        assert all(a.startswith("HTTP/1.1 408") for a in answers), answers
        assert HEAD_SECONDS - 1 < waited < HEAD_SECONDS + 5
        assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 200
        big = {"X-Big": "x" * (HEAD_LIMIT + 1)}
        with _raw_post(server, big, b"") as sock:
            answer = _response(sock)
        assert answer.startswith("HTTP/1.1 431"), answer
