"""Real processes on loopback for tests: `modelcycle serve`, Prometheus, the API entry script.

Ports are chosen free, every wait is bounded, a process is always stopped on exit, and a
failure message carries the tail of the process's output. Shared by the serving,
monitoring, load-test and deployment tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.monitoring.capture import CaptureStore

READY_TIMEOUT = 150.0  # seconds: loading torch/onnxruntime (per worker) on a busy 2-core machine


@dataclass
class Server:
    """A started program, its URL and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self, lines: int = 60) -> str:
        """The tail of the process's output (200 OK access lines left out), for failures."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        kept = [line for line in text.splitlines() if not line.endswith('" 200 OK')]
        tail = "\n".join(kept[-lines:])
        return f"exit code {self.process.poll()}; output of {self.log.name}:\n{tail}"


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_program(name: str) -> str:
    """The path of `name`, or a test failure that says how to install it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make prometheus` (Debian's prometheus).")
    return path


def serve_command(
    root: Path,
    port: int,
    *extra: str,
    reference: str = "twins@champion",
    console_script: bool = False,
) -> list[str]:
    """`modelcycle serve REFERENCE` on loopback `port` with the workspace `root`.

    As `python -m modelcycle`, or with `console_script` as the installed `modelcycle`
    command, as users run it (spawned workers import a different main module then).
    """
    script = Path(sys.executable).with_name("modelcycle")
    start = (str(script),) if console_script else (sys.executable, "-m", "modelcycle")
    return [
        *start,
        "serve",
        reference,
        f"workspace={root}",
        f"serve.port={port}",
        "serve.host=127.0.0.1",
        *extra,
    ]


@contextmanager
def started(
    command: Sequence[str],
    log: Path,
    url: str,
    ready_path: str = "/readyz",
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start `command`, wait until GET `url + ready_path` is 200, always stop it afterwards.

    The environment is this process's without `MODELCYCLE_API_KEY`, updated with `env`.
    """
    environ = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_API_KEY"}
    environ.update(env or {})
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=log.parent
        )
    server = Server(popen, url, log)
    try:
        wait_ready(server, ready_path)
        yield server
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                popen.kill()
        popen.wait(timeout=30)


@contextmanager
def running_server(
    root: Path, log: Path, reference: str = "twins@champion", extra: tuple[str, ...] = ()
) -> Iterator[Server]:
    """Start `modelcycle serve` on a free port and wait for /readyz; always stop it."""
    port = free_port()
    command = serve_command(root, port, *extra, reference=reference)
    with started(command, log, f"http://127.0.0.1:{port}") as server:
        yield server


def wait_ready(server: Server, path: str = "/readyz") -> None:
    """Poll `path` until 200; fail with the process's output if it exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"{server.url} exited before it was ready; {server.output()}")
            try:
                if client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.25)
    pytest.fail(f"{server.url}{path} was not 200 within {READY_TIMEOUT:.0f} s; {server.output()}")


# --- load for tests: example requests, a bounded load loop, what the server reports ---

PREDICT_ROUTE = "/v1/models/{name}/predict"


def examples(server: Server) -> list[dict[str, Any]]:
    """The request bodies of the server's example requests for twins."""
    response = httpx.get(f"{server.url}/v1/models/twins/examples", timeout=10)
    assert response.status_code == 200, response.text
    bodies = [e["request"] for e in response.json()["examples"]]
    assert bodies, "the server offers no example requests"
    return bodies


def capture_count(root: Path) -> int:
    """Captured twins predictions in the workspace's capture store (0 before the first)."""
    path = root / "capture.db"
    if not path.exists():
        return 0
    with CaptureStore(path) as store:
        return store.count(model="twins")


@dataclass
class Tally:
    """What a load run saw, shared by its threads."""

    statuses: dict[int, int] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                self.versions.add(response.json()["version"])

    def failure(self, err: Exception) -> None:
        with self.lock:
            self.errors.append(f"{type(err).__name__}: {err}")

    @property
    def acks(self) -> int:
        with self.lock:
            return self.statuses.get(200, 0)


def load(
    server: Server,
    bodies: list[dict[str, Any]],
    tally: Tally,
    *,
    threads: int = 8,
    total: int | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Send predict requests from `threads` threads: `total` in all, or until `stop` is set."""
    url = f"{server.url}/v1/models/twins/predict"
    counter = iter(range(total if total is not None else sys.maxsize))
    counter_lock = threading.Lock()

    def worker(offset: int) -> None:
        with httpx.Client(timeout=10.0) as client:
            while stop is None or not stop.is_set():
                with counter_lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    tally.record(client.post(url, json=bodies[(i + offset) % len(bodies)]))
                except httpx.TransportError as err:
                    tally.failure(err)
                    if stop is not None:  # the server is going away: stop this thread
                        return

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker, t) for t in range(threads)]:
            future.result()


@contextmanager
def loading(
    server: Server, bodies: list[dict[str, Any]], tally: Tally
) -> Iterator[threading.Thread]:
    """`load` from a background thread while the block runs; then stopped and joined (30 s)."""
    stop = threading.Event()
    loader = threading.Thread(target=load, args=(server, bodies, tally), kwargs={"stop": stop})
    loader.start()
    try:
        yield loader
    finally:
        stop.set()
        loader.join(timeout=30)


def wait_for(
    condition: Callable[[], bool], seconds: float, what: str, server: Server | None = None
) -> None:
    """Poll `condition` every 0.05 s; fail naming `what` (and the server's output) after
    `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        output = f"; {server.output()}" if server is not None else ""
        assert time.monotonic() < deadline, f"timed out waiting for {what}{output}"
        time.sleep(0.05)


def metric_samples(server: Server) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The server's Prometheus samples by sample name."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


BLOCKED = ("torch", "lightning", "timm", "torchvision", "torch_geometric", "monai")

#: `modelcycle ARGS` with the training libraries unimportable, as if not installed (an entry
#: of None in sys.modules would also block them, but libraries that look there would break).
WITHOUT_TORCH = (
    "import sys\n"
    "class Absent:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    f"        if name.partition('.')[0] in {BLOCKED!r}:\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "sys.meta_path.insert(0, Absent())\n"
    "sys.argv = ['modelcycle', *sys.argv[1:]]\n"
    "from modelcycle.__main__ import main\n"
    "main()\n"
)


def serve_without_torch(root: Path, port: int, reference: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        WITHOUT_TORCH,
        "serve",
        reference,
        f"workspace={root}",
        f"serve.port={port}",
        "serve.host=127.0.0.1",
        "monitor.interval_seconds=0.5",  # a drift check soon after the requests
        "monitor.window=40",
        "monitor.min_captures=30",
    ]


def drift_without_torch(
    root: Path, model: str, log: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Serve `model@champion` from `root` where torch cannot be imported, answer 40 of its
    examples (the web page too), and return its first drift check's summary."""
    port = free_port()
    command = serve_without_torch(root, port, f"{model}@champion")
    with (
        started(command, log, f"http://127.0.0.1:{port}", env=env) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.get("/").status_code == 200  # the web page
        listed = client.get(f"/v1/models/{model}/examples").json()["examples"]
        bodies = [e["request"] for e in listed]
        assert bodies, server.output()
        for i in range(40):
            answer = client.post(f"/v1/models/{model}/predict", json=bodies[i % len(bodies)])
            assert answer.status_code == 200, answer.text
            assert answer.json()["version"] == "1"
        deadline = time.monotonic() + 30
        while (summary := client.get(f"/v1/models/{model}/drift").json())["n_current"] < 30:
            assert time.monotonic() < deadline, f"no drift check; {server.output()}"
            time.sleep(0.25)
    assert summary["status"] in ("no_drift", "drift"), summary
    assert "Traceback" not in log.read_text()
    result: dict[str, Any] = summary
    return result
