"""Serving throughput and tail latency, side by side, as ratios.

Starts real servers on 127.0.0.1 (each on a free port, always terminated):

  ours      `modelcycle serve MODEL` (ONNX Runtime, micro-batching, serve.max_batch=32)
  ours-b1   the same with serve.max_batch=1 (batching off)
  ours-w2   the same with serve.workers=2 and serve.threads=1 (a process per core)
  floor     uvicorn, configured as ours, with an app that reads the body and answers a
            constant: what HTTP alone costs here, the ceiling for any server of this stack
  naive     FastAPI + the PyTorch module called eagerly per request, no batching (below)
  litserve  LitServe serving the same hash-checked ONNX session through the same adapter,
            with its own dynamic batching (max_batch_size=32, batch_timeout 1 ms)

and measures, with bounded load generators on loopback (keep-alive HTTP/1.1 on raw sockets,
about a tenth of httpx's CPU per request):

  1. served ÷ bare ONNX Runtime (session.run in this process, on batches of the size the
     server formed), closed loop; for information, bare ONNX Runtime with a single-thread
     session per core, each run from a thread of its own, against ours-w2 (a process per
     core) and against the bare session as the server loads it;
  2. served ÷ naive, closed loop; for information, bare ÷ naive, the most that any server
     running ONNX Runtime could reach here;
  3. batching on ÷ off (ours ÷ ours-b1): throughput and p99 in the closed loop, p50 with one
     client (a lone request, which batching must never delay) and p99 in an open loop at
     70 % of ours' peak (the two in interleaved rounds of at least `--steady-answers`
     answers each, so that a slow model's p99 rests on as many as a fast one's); batching
     stays on only if it is never worse (aims ≥ 1 and ≤ 1);
  4. p99 ÷ p50 of ours in that open loop at 70 % of the peak (the closed-loop rate);
  5. goodput ÷ peak in an open loop at 4× the peak (goodput: 200s within the deadline per
     second, counted while the load lasts, not in the drain after it; 429s and timeouts are
     not good), with clients that say in X-Deadline-Ms how long they will still wait and
     with clients that do not, alternating `--overload-runs` times (mean and range);
  6. served ÷ LitServe, closed loop: throughput and p99.

Closed-loop subjects run interleaved in `--rounds` rounds so that background load hits them
alike (LitServe, which polls even when idle, is paused while the others are measured), and
each closed-loop ratio is printed with its range over the rounds (the ratio of each round's
back-to-back slices), which shows how much the machine's load moved it; every loop stops at
a time limit and a request-count limit. Absolute numbers depend on the machine (the load
generator shares its cores with the servers); read the ratios.

    python bench/serving.py [--workspace WS] [--data ../shared/data/qtim] [--seconds 10]
    python bench/serving.py --task image [--backbone resnet18] [--image-size 224] [--variant int8]

Without --workspace it builds a throwaway one: an untrained twins model on the QTIM files,
registered as twins@champion and exported to ONNX (as tests/serving_fixtures.py does), or
with --task image an untrained timm backbone on the rice stand-in, image_rice@champion. The
twins model costs about 0.1 ms per request, so HTTP dominates; an image model at 224 px costs
milliseconds, where the model dominates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import litserve as ls
import numpy as np

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 180.0  # seconds for a server to import, load, warm up and answer
TIMEOUT, FAILED, EXPIRED = -1, -2, -3  # pseudo statuses of the load generators
STARTED = time.perf_counter()


def say(message: str) -> None:
    """A progress line with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", flush=True)


# --- the model: a throwaway workspace, or the one given ------------------------------------


def build_image_workspace(
    tmp: Path,
    backbone: str,
    size: int,
    reference_rows: int = 60,
    per_class: int = 24,
    versions: int = 1,
) -> Path:
    """image_rice@champion version 1 in `tmp/ws`: an untrained timm `backbone` at `size` px on
    the rice stand-in (the model's compute, not its accuracy, is what serving measures), with
    `per_class` images of each of its 5 classes and a drift reference of `reference_rows`;
    `versions` above 1 registers and exports that many versions of the same model (see
    `publish`)."""
    from functools import partial

    from modelcycle.data.rice import RiceSource
    from modelcycle.models.image_classifier import timm_backbone
    from modelcycle.tasks.image import ImageTask

    source = RiceSource(
        download_dir=tmp / "rice", synthetic=True, image_size=size, per_class_synthetic=per_class
    )
    encoder = partial(timm_backbone, name=backbone, pretrained=False)
    task = ImageTask(source, encoder, held_out_rows=12, reference_rows=reference_rows)
    return publish(task, tmp, versions)


def build_workspace(data: Path, tmp: Path) -> Path:
    """twins@champion version 1 in `tmp/ws`: an untrained siamese model on `data`, registered
    from a run shaped like a pipeline's and exported to ONNX; returns the workspace root."""
    from modelcycle.data.qtim import QTIMSource
    from modelcycle.models.encoders import MLPEncoder
    from modelcycle.tasks.twins import TwinsTask

    return publish(TwinsTask(QTIMSource(root=data), encoder=MLPEncoder), tmp)


def publish(task: Any, tmp: Path, versions: int = 1) -> Path:
    """Register `task`'s untrained model from a pipeline-shaped run, promote it to champion
    and export it to ONNX, in `tmp/ws`; returns the workspace root.

    With `versions` above 1, the same model is registered again from as many more runs, each
    scoring a little higher (the gate), and each version is exported; champion stays at
    version 1, so moving it is a hot reload to an equal model."""
    from modelcycle.export import export_version
    from modelcycle.pipeline import run_tags
    from modelcycle.registry import Registry
    from modelcycle.tracking import Tracker, TrackingSettings

    cohort, summary = task.load()
    fold = task.final_fold(cohort, seed=0)
    servable = task.servable(task.model(cohort, fold), cohort, fold)
    tracker = Tracker(TrackingSettings(), tmp / "ws")
    name, metric = task.model_name, task.primary_metric
    servable.save(tmp / "model")
    registry = Registry(tracker.uri)
    for k in range(versions):
        with tracker.run(name) as run_id:
            tracker.set_tags(run_tags(task, summary.data_hash))
            score = 0.95 + 0.001 * k
            tracker.log_metrics({f"model_{metric}_mean": score, f"baseline_{metric}_mean": 0.9})
            tracker.log_directory(tmp / "model", "model")
        version, _ = registry.register(run_id, name)
        if k == 0:
            registry.promote(name)
        export_version(registry, f"{name}/{version.version}", tmp / "ws" / "exports")
    return tmp / "ws"


# --- servers -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process on 127.0.0.1 and where its output goes."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    predict: str  # the predict route
    ready: str  # the route that answers 200 once the model is loaded
    log: Path

    def tail(self, lines: int = 30) -> str:
        """The last lines of its output, access-log lines left out."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        kept = [line for line in text.splitlines() if '" 200' not in line]
        return "\n".join(kept[-lines:])


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    stack: contextlib.ExitStack,
    name: str,
    command: list[str],
    port: int,
    routes: tuple[str, str],
    logs: Path,
    extra_env: dict[str, str] | None = None,
) -> Server:
    """Start a server listening on `port`; it is stopped when `stack` closes."""
    env = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_API_KEY"}
    env.update(extra_env or {})
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        # Its own process group: LitServe (and uvicorn workers) start children that must stop
        # with it. Left running, they busy-poll and slow every later measurement.
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=logs,
            start_new_session=True,
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", *routes, log)
    stack.callback(stop, server)
    return server


def serve_command(model: str, workspace: Path, port: int, *overrides: str) -> list[str]:
    """`modelcycle serve MODEL` on 127.0.0.1:`port` from `workspace`, with config overrides."""
    return [
        *(sys.executable, "-m", "modelcycle", "serve", model),
        f"workspace={workspace}",
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        *overrides,
    ]


def example_bodies(server: Server, name: str) -> list[bytes]:
    """The JSON bodies of model `name`'s example requests, as `server` lists them."""
    response = httpx.get(server.url + f"/v1/models/{name}/examples", timeout=10)
    return [json.dumps(e["request"]).encode() for e in response.json()["examples"]]


def stop(server: Server) -> None:
    """SIGTERM to its whole process group, then SIGKILL to what is left after 15 s."""
    group = server.process.pid  # the leader of its own session and group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGCONT)  # a paused server would not act on SIGTERM
        os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)  # children that outlived their parent, too
    server.process.wait(timeout=15)


@contextlib.contextmanager
def paused(server: Server) -> Iterator[None]:
    """SIGSTOP `server`'s process group while inside, SIGCONT on the way out.

    LitServe's main process polls its queues even when idle (about 0.1 core here), so it
    is paused while the other subjects are measured, or its polling would slow them and
    not itself. (uvicorn's multi-worker supervisor health-checks its workers with a
    timeout, so `ours-w2` is never paused; the other servers idle at about 0 core.)
    """
    group = server.process.pid
    os.killpg(group, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(group, signal.SIGCONT)


def wait_ready(servers: list[Server], poll: float = 0.2) -> dict[str, float]:
    """Poll each server's readiness route every `poll` seconds until all answer 200 (bounded
    by READY_TIMEOUT); returns when each did (`time.monotonic()`), by server name."""
    deadline = time.monotonic() + READY_TIMEOUT
    pending, ready = list(servers), {}
    with httpx.Client(timeout=2.0) as client:
        while pending:
            for server in list(pending):
                if server.process.poll() is not None:
                    raise RuntimeError(
                        f"{server.name} exited ({server.process.returncode}):\n{server.tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if client.get(server.url + server.ready).status_code == 200:
                        ready[server.name] = time.monotonic()
                        pending.remove(server)
                        say(f"{server.name} ready on {server.url}")
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise RuntimeError(f"not ready within {READY_TIMEOUT:.0f} s: {names}")
            if pending:
                time.sleep(poll)
    return ready


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Plain ASGI: read the body, answer a constant JSON (the HTTP-only ceiling)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"outputs": {}}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def floor_server(port: int) -> None:
    """`floor_app` under uvicorn with the settings `modelcycle serve` uses (no access log)."""
    import uvicorn

    uvicorn.run(floor_app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def naive_server(model_dir: Path, port: int) -> None:
    """The naive baseline: FastAPI + the PyTorch module called eagerly per request.

    Loads the saved model directory with `ServableModel.load`, validates the same request
    body (the task's pydantic request type) and decodes it with the task's adapter, then
    calls the module once per request: no batching, no ONNX. Same uvicorn settings as
    `modelcycle serve` (one process, access log on).
    """
    import torch
    import uvicorn
    from fastapi import FastAPI

    from modelcycle.servable import ServableModel
    from modelcycle.tasks import get_task

    servable = ServableModel.load(model_dir)
    module = servable.module.eval()
    adapter = get_task(servable.task).serving(servable.info)
    app = FastAPI(title="naive")

    def predict(body: Any) -> dict[str, Any]:
        rows = adapter.decode(body)
        with torch.inference_mode():
            outputs = module(*(torch.from_numpy(row) for row in rows))
        named = {n: o.numpy() for n, o in zip(servable.output_names, outputs, strict=True)}
        return {"outputs": adapter.encode(named)}

    predict.__annotations__["body"] = adapter.request_type  # the body FastAPI validates
    app.post("/predict")(predict)
    app.get("/healthz")(lambda: {"status": "alive"})
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="info")


class OnnxLitAPI(ls.LitAPI):
    """LitServe with the same model: the registry's hash-checked ONNX and the task's adapter.

    Each request is validated with the task's pydantic type and decoded by its adapter, as in
    `modelcycle serve`; LitServe batches up to 32 requests (1 ms timeout) into one
    ONNX Runtime call. (Module level: LitServe pickles it into its worker process.)
    """

    def __init__(self, workspace: Path, model: str, overrides: list[str]) -> None:
        super().__init__(max_batch_size=32, batch_timeout=0.001)
        self.workspace, self.model, self.overrides = workspace, model, overrides

    def setup(self, device: str) -> None:
        from modelcycle.config import build_registry, compose_config, serve_config
        from modelcycle.serving.loading import default_threads, load_served, warm_up

        cfg = compose_config([f"workspace={self.workspace}", *self.overrides])
        registry, variant = build_registry(cfg), serve_config(cfg).variant
        cache = self.workspace / "serving-litserve"
        self.served = load_served(registry, self.model, cache, default_threads(), variant)
        warm_up(self.served)

    # No annotation on `request`: LitServe then hands over the parsed JSON body, like ours.
    def decode_request(self, request) -> list[np.ndarray]:
        body = self.served.adapter.request_type.model_validate(request)
        return self.served.adapter.decode(body)

    def batch(self, inputs: list[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.concatenate(column) for column in zip(*inputs, strict=True)]

    def predict(self, x: list[np.ndarray]) -> list[np.ndarray]:
        return self.served.run(x)

    def unbatch(self, output: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        names = self.served.output_names
        return [
            {n: o[i : i + 1] for n, o in zip(names, output, strict=True)}
            for i in range(len(output[0]))
        ]

    def encode_response(self, output: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"version": self.served.version, "outputs": self.served.adapter.encode(output)}


def litserve_server(workspace: Path, model: str, port: int, overrides: list[str]) -> None:
    """LitServe serving `model` from `workspace` (one worker process, like ours), with the
    same `serve.variant` (config `overrides`) as ours."""
    api = OnnxLitAPI(workspace, model, overrides)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


# --- the load generator: HTTP/1.1 keep-alive on raw sockets -------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs prepared bodies.

    The generator shares the cores with the servers, so it must cost little: httpx spent
    about 1 ms of CPU per request, more than the server under test. This writes a prepared
    request and reads the status line, headers and a Content-Length (or chunked) body, about
    a tenth of that. Every server here answers with a Content-Length.
    """

    def __init__(self, host: str, port: int, path: str, bodies: list[bytes]) -> None:
        self.host, self.port = host, port
        head = f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        self.head = head.encode()
        self.tails = [f"content-length: {len(b)}\r\n\r\n".encode() + b for b in bodies]
        self.requests = [self.head + tail for tail in self.tails]
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def to(cls, server: Server, bodies: list[bytes]) -> Connection:
        """A connection to `server`'s predict route (not opened yet)."""
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        return cls(host, int(port), server.predict, bodies)

    async def post(self, i: int, deadline_ms: float | None = None) -> int:
        """Send prepared request `i` (modulo their number); its HTTP status.

        `deadline_ms`: sent as X-Deadline-Ms, how long the client will still wait.
        """
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            if deadline_ms is None:
                self.writer.write(self.requests[i % len(self.requests)])
            else:
                deadline = f"x-deadline-ms: {max(deadline_ms, 1.0):.0f}\r\n".encode()
                self.writer.write(self.head + deadline + self.tails[i % len(self.tails)])
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, length, chunked, close = _parse_head(head)
            if chunked:
                while size := int((await self.reader.readuntil(b"\r\n"))[:-2], 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readuntil(b"\r\n")
            else:
                await self.reader.readexactly(length)
        except BaseException:  # a timeout or a broken connection: its state is unknown
            self.close()
            raise
        if close:
            self.close()
        return status

    def close(self) -> None:
        """Drop the socket; the next post opens a new one."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """Status, Content-Length, whether chunked, whether the server closes, of a response head."""
    lines = head.split(b"\r\n")
    status, length, chunked, close = int(lines[0].split(b" ", 2)[1]), 0, False, False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        key, value = key.strip().lower(), value.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value
        elif key == b"connection":
            close = value == b"close"
    return status, length, chunked, close


# --- measurements --------------------------------------------------------------------------


@dataclass
class Tally:
    """What one subject saw, summed over its slices."""

    seconds: float = 0.0  # the measured span (an open loop's sending span)
    wall: float = 0.0  # the span the CPU times cover (an open loop's drain included)
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)  # seconds, by status
    server_cpu: np.ndarray = field(default_factory=lambda: np.zeros(2))  # event loop, rest
    client_cpu: float = 0.0
    others_cpu: float = 0.0  # every other process on the machine (background load)
    batches: np.ndarray = field(default_factory=lambda: np.zeros(2))  # sum, count

    def add(self, other: Tally) -> None:
        """Fold another slice into this one."""
        self.seconds += other.seconds
        self.wall += other.wall
        self.statuses.update(other.statuses)
        for status, values in other.latencies.items():
            self.latencies.setdefault(status, []).extend(values)
        self.server_cpu += other.server_cpu
        self.client_cpu += other.client_cpu
        self.others_cpu += other.others_cpu
        self.batches += other.batches

    def record(self, status: int, seconds: float) -> None:
        """One answer (not thread-safe: give each thread its own tally)."""
        self.statuses[status] += 1
        self.latencies.setdefault(status, []).append(seconds)

    @property
    def ok(self) -> int:
        """Requests answered 200."""
        return self.statuses[200]

    @property
    def rate(self) -> float:
        """200s per second."""
        return self.ok / self.seconds if self.seconds else 0.0

    def ms(self, q: float, status: int = 200) -> float:
        """The q-th percentile of the latency of answers with `status`, in ms."""
        values = self.latencies.get(status)
        return float(np.percentile(values, q) * 1000) if values else float("nan")

    @property
    def mean_batch(self) -> float:
        """Mean micro-batch size the server formed (nan when unknown)."""
        return self.batches[0] / self.batches[1] if self.batches[1] else float("nan")

    def cpu_line(self) -> str:
        """CPU cores used while it ran, and server CPU per request."""
        per = (self.server_cpu.sum() / self.ok * 1000) if self.ok else float("nan")
        wall = self.wall or self.seconds
        return (
            f"server CPU {self.server_cpu[0] / wall:.2f} core event loop + "
            f"{self.server_cpu[1] / wall:.2f} other threads ({per:.2f} ms per 200), "
            f"client {self.client_cpu / wall:.2f} core, other processes "
            f"{self.others_cpu / wall:.2f} core"
        )


def process_cpu(pid: int) -> np.ndarray:
    """CPU seconds of the main threads and of the other threads of every process in `pid`'s
    process group (a server and the workers it starts; Linux /proc, else zeros)."""
    tick = os.sysconf("SC_CLK_TCK")

    def fields(path: Path) -> list[str]:
        return path.read_text().rsplit(")", 1)[1].split()

    found = np.zeros(2)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            values = fields(stat)
            if int(values[2]) != pid:  # the process group
                continue
            member = stat.parent.name
            total = (int(values[11]) + int(values[12])) / tick
            main_values = fields(stat.parent / "task" / member / "stat")
            main = (int(main_values[11]) + int(main_values[12])) / tick
        except (OSError, ValueError, IndexError):
            continue  # it ended meanwhile
        found += (main, total - main)
    return found


def machine_cpu() -> float:
    """CPU seconds all cores have been busy since boot (Linux /proc/stat; else 0)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


@contextlib.contextmanager
def cpu_meter(server: Server, tally: Tally) -> Iterator[None]:
    """Charge the CPU used while the block runs to the server, this process and the rest."""
    cpu, client, machine = process_cpu(server.process.pid), time.process_time(), machine_cpu()
    yield
    tally.server_cpu = process_cpu(server.process.pid) - cpu
    tally.client_cpu = time.process_time() - client
    tally.others_cpu = max(0.0, machine_cpu() - machine - tally.server_cpu.sum() - tally.client_cpu)


def batch_stats(server: Server, model: str) -> np.ndarray:
    """Sum and count of the server's micro-batch size histogram for `model`."""
    from prometheus_client.parser import text_string_to_metric_families

    found = np.zeros(2)
    text = httpx.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "modelcycle_batch_size_sum":
                found[0] = sample.value
            elif sample.name == "modelcycle_batch_size_count":
                found[1] = sample.value
    return found


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection in this process while a load loop runs.

    This process holds torch, MLflow and an ONNX Runtime session: a full collection here
    pauses the load generator for tens of ms, which a server's tail latency would be blamed
    for. Every loop is bounded, so the garbage it leaves is bounded too.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def closed_loop(
    server: Server, bodies: list[bytes], clients: int, seconds: float, max_requests: int
) -> Tally:
    """`clients` connections, each sending its next request when the last is answered."""
    with collector_paused():
        return asyncio.run(_closed_loop(server, bodies, clients, seconds, max_requests))


async def _closed_loop(
    server: Server, bodies: list[bytes], clients: int, seconds: float, max_requests: int
) -> Tally:
    tally, budget = Tally(), iter(range(max_requests))
    connections = [Connection.to(server, bodies) for _ in range(clients)]

    async def client(offset: int, connection: Connection) -> None:
        i = offset
        while time.perf_counter() < stop_at and next(budget, None) is not None:
            sent = time.perf_counter()
            try:
                async with asyncio.timeout(30.0):
                    status = await connection.post(i)
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError):
                status = FAILED
            tally.record(status, time.perf_counter() - sent)
            i += 1

    for connection in connections:  # open them before the clock starts
        await connection.post(0)
    try:
        with cpu_meter(server, tally):
            started = time.perf_counter()
            stop_at = started + seconds
            await asyncio.gather(*(client(t, c) for t, c in enumerate(connections)))
            tally.seconds = time.perf_counter() - started
    finally:
        for connection in connections:
            connection.close()
    return tally


@dataclass
class OpenLoop:
    """What an open loop saw: from the scheduled time, from the send, and the client wait."""

    tally: Tally  # latency from the scheduled send time (what a user waits)
    service: Tally  # latency from the actual send (what the server takes)
    waits: list[float]  # seconds each sent request waited for a free connection
    good: int  # 200s within the deadline that arrived while sending went on (not the drain)
    # (scheduled send, latency from it, status) of each request, in order of the answers:
    # seconds from the first scheduled send, `origin` (`time.monotonic()`, the loop's clock)
    timeline: list[tuple[float, float, int]] = field(default_factory=list)
    origin: float = 0.0

    @property
    def goodput(self) -> float:
        """Good answers per second of the sending span: the drain after it is not counted,
        or a backlog answered after the load stopped would read as goodput above the peak."""
        return self.good / self.tally.seconds if self.tally.seconds else 0.0

    def sent_line(self) -> str:
        """How fast the generator really sent, and how long requests waited in the client."""
        if not self.waits:
            return "sent nothing"
        p50, p99 = np.percentile(self.waits, [50, 99]) * 1000
        rate = len(self.waits) / self.tally.seconds
        return f"sent {rate:.0f} req/s, client wait p50 {p50:.1f} ms, p99 {p99:.1f} ms"

    def behind(self, deadline: float) -> bool:
        """Whether the generator, not only the server, limited what was sent in time."""
        return bool(self.waits) and float(np.percentile(self.waits, 50)) > 0.1 * deadline


async def open_loop(
    server: Server,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    deadline: float,
    connections: int,
    send_deadline: bool = True,
) -> OpenLoop:
    """Send at a fixed `rate` for `seconds`, whatever the answers.

    With `send_deadline`, each request says in X-Deadline-Ms how long its client will still
    wait (the deadline less its time in the client's queue), as a deadline-aware client does.

    Each scheduled request joins a client-side FIFO that `connections` workers (one
    keep-alive connection each, opened before the clock starts) drain. Latency counts from the
    scheduled time, so time spent waiting for a free connection is charged too (no
    coordinated omission); a request whose deadline passes while it waits in the client
    is not sent (EXPIRED).
    """
    loop = asyncio.get_running_loop()
    tally, service = Tally(seconds=seconds), Tally(seconds=seconds)
    waits: list[float] = []
    queue: asyncio.Queue[tuple[float, int] | None] = asyncio.Queue()
    total = max(1, int(rate * seconds))
    clients = [Connection.to(server, bodies) for _ in range(connections)]
    window_end, good = [float("inf")], [0]  # set when the clock starts
    timeline: list[tuple[float, float, int]] = []

    async def worker(connection: Connection) -> None:
        while (item := await queue.get()) is not None:
            scheduled, i = item
            if loop.time() >= scheduled + deadline:
                tally.record(EXPIRED, loop.time() - scheduled)
                timeline.append((scheduled - first, loop.time() - scheduled, EXPIRED))
                continue
            sent = loop.time()
            waits.append(sent - scheduled)
            try:
                async with asyncio.timeout_at(scheduled + deadline):
                    left_ms = (scheduled + deadline - loop.time()) * 1000
                    status = await connection.post(i, left_ms if send_deadline else None)
            except TimeoutError:
                status = TIMEOUT
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = FAILED
            done = loop.time()
            tally.record(status, done - scheduled)
            service.record(status, done - sent)
            timeline.append((scheduled - first, done - scheduled, status))
            if status == 200 and done - scheduled <= deadline and done <= window_end[0]:
                good[0] += 1

    workers: list[asyncio.Task[None]] = []
    try:
        async with asyncio.timeout(60):  # open every connection before the clock starts
            await asyncio.gather(*(c.post(0) for c in clients))
        with cpu_meter(server, tally):
            began = loop.time()
            workers = [asyncio.create_task(worker(c)) for c in clients]
            start = first = loop.time() + 0.05
            window_end[0] = start + seconds
            for i in range(total):
                scheduled = start + i / rate
                await asyncio.sleep(max(0.0, scheduled - loop.time()))  # yields even when late
                queue.put_nowait((scheduled, i))
            for _ in workers:
                queue.put_nowait(None)
            await asyncio.wait(workers, timeout=deadline + 10)  # requests end by their deadline
            tally.wall = loop.time() - began
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for client in clients:
            client.close()
    return OpenLoop(tally, service, waits, good[0], timeline, first)


@dataclass
class Bare:
    """ONNX Runtime in this process, loaded exactly as the server loads it."""

    served: Any  # modelcycle.serving.loading.ServedModel
    rows: list[list[np.ndarray]]  # per request: one array per input, batch axis 1
    bodies: list[bytes]
    per_core: list[Any] = field(default_factory=list)  # one single-thread session per core

    def run_per_core(self, batch: int, seconds: float, max_batches: int) -> Tally:
        """Each `per_core` session in a thread of its own (ONNX Runtime releases the GIL),
        on batches of `batch` requests: ONNX Runtime's own best layout on this machine."""
        inputs = stacked([self.rows[k % len(self.rows)] for k in range(batch)])
        counts = [0] * len(self.per_core)
        started = time.perf_counter()
        stop_at = started + seconds

        def loop(k: int) -> None:
            while time.perf_counter() < stop_at and counts[k] < max_batches:
                self.per_core[k].run(inputs)
                counts[k] += 1

        threads = [threading.Thread(target=loop, args=(k,)) for k in range(len(counts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        tally = Tally(seconds=time.perf_counter() - started)
        tally.statuses[200] = sum(counts) * batch
        return tally

    def run(self, batch: int, seconds: float, max_batches: int, full_path: bool) -> Tally:
        """Batches of `batch` requests, each concatenated, run, and split as the server
        does; with `full_path`, also JSON-parse, validate, decode and encode each request."""
        from modelcycle.serving.app import validate_json

        served, adapter, tally = self.served, self.served.adapter, Tally()
        started = time.perf_counter()
        stop_at, done, i = started + seconds, 0, 0
        while time.perf_counter() < stop_at and done < max_batches:
            picks = [(i + k) % len(self.rows) for k in range(batch)]
            if full_path:
                rows = []
                for p in picks:
                    rows.append(adapter.decode(validate_json(adapter.request_type, self.bodies[p])))
                    adapter.drift_features(rows[-1])
            else:
                rows = [self.rows[p] for p in picks]
            outputs = served.run(stacked(rows))
            answers = [
                {n: out[k : k + 1] for n, out in zip(served.output_names, outputs, strict=True)}
                for k in range(batch)
            ]
            if full_path:
                for answer in answers:
                    json.dumps({"outputs": adapter.encode(answer)})
            i, done = i + batch, done + 1
        tally.seconds = time.perf_counter() - started
        tally.statuses[200] = done * batch
        return tally


def stacked(rows: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Requests' rows (one array per input each) as one batch per input, as the server joins
    them."""
    from modelcycle.serving.app import joined

    return [joined(column) for column in zip(*rows, strict=True)]


# --- the run -------------------------------------------------------------------------------


def stop_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so every ExitStack stops the servers it started.

    Python's default SIGTERM ends the process at once: a killed bench left its servers, and
    a SIGSTOPped LitServe, running.
    """
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, help="serve MODEL from this workspace")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qtim")
    parser.add_argument("--model", help="NAME@ALIAS to serve (default: the task's champion)")
    parser.add_argument(
        "--task",
        choices=("twins", "image"),
        default="twins",
        help="the throwaway workspace's model: twins (QTIM) or image (rice stand-in)",
    )
    parser.add_argument("--backbone", default="resnet18", help="timm model of --task image")
    parser.add_argument("--image-size", type=int, default=224, help="pixels, --task image")
    parser.add_argument(
        "--variant",
        choices=("fp32", "int8"),
        default="fp32",
        help="the exported file ours, bare and LitServe run (serve.variant); naive runs PyTorch",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per subject and loop")
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="interleaved closed-loop rounds (ratios show their range over the rounds)",
    )
    parser.add_argument("--clients", type=int, default=8, help="closed-loop client threads")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per loop")
    parser.add_argument("--connections", type=int, default=64, help="open loop at 70 %%")
    parser.add_argument(
        "--steady-answers",
        type=int,
        default=1000,
        help="answers per subject and round at 70 %% (slow models run longer for their p99)",
    )
    parser.add_argument(
        "--overload-connections",
        type=int,
        default=512,
        help="open loop in overload (above serve.queue_limit, so the server may shed)",
    )
    parser.add_argument("--overload", type=float, default=4.0, help="× peak for goodput")
    parser.add_argument(
        "--overload-runs",
        type=int,
        default=2,
        help="overload runs with and without X-Deadline-Ms, alternating (goodput shows the range)",
    )
    parser.add_argument("--deadline-ms", type=float, help="default: the config's serve.deadline_ms")
    parser.add_argument(
        "--capture",
        choices=("auto", "on", "off"),
        default="auto",
        help="serve.capture; auto: on in a throwaway workspace, off in a given one",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".modelcycle/reports/bench-serving"),
        help="where the table (MODEL-VARIANT.txt) and the plot of the ratios (.png) go",
    )
    parser.add_argument("--naive-server", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--litserve-workspace", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--litserve-override", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model or ("image_rice@champion" if args.task == "image" else "twins@champion")
    if (
        min(args.rounds, args.clients, args.overload_runs) < 1
        or min(args.seconds, args.overload) <= 0
    ):
        parser.error(
            "--rounds, --seconds, --clients, --overload and --overload-runs must be positive"
        )
    if args.floor_server:
        floor_server(args.port)
        return
    if args.naive_server is not None:
        naive_server(args.naive_server, args.port)
        return
    if args.litserve_workspace is not None:
        litserve_server(args.litserve_workspace, args.model, args.port, args.litserve_override)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.WARNING)
    say(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores before the run")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        rows = run(args, Path(tmp))
    table = print_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.model.split('@', 1)[0]}-{args.variant}"
    stem.with_suffix(".txt").write_text(table)
    plot_rows(rows, stem.with_suffix(".png"), f"bench/serving.py: {args.model} ({args.variant})")
    say(f"table and plot in {stem}.txt and {stem}.png")
    say(f"done; load average {os.getloadavg()[0]:.2f} at the end")


def run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """Build or open the workspace, start the servers, measure; returns the table rows."""
    from modelcycle.config import build_registry, compose_config, serve_config
    from modelcycle.serving.app import validate_json
    from modelcycle.serving.loading import default_threads, load_served, warm_up

    if args.workspace is None and args.task == "image":
        say(f"building a throwaway workspace: untrained {args.backbone} at {args.image_size} px")
        workspace = build_image_workspace(tmp, args.backbone, args.image_size)
    elif args.workspace is None:
        say(f"building a throwaway workspace from {args.data.resolve()}")
        workspace = build_workspace(args.data.resolve(), tmp)
    else:
        workspace = args.workspace.resolve()
    capture = args.capture == "on" or (args.capture == "auto" and args.workspace is None)
    variant = [f"serve.variant={args.variant}"]
    if args.variant == "int8" and args.workspace is None:
        # An untrained model's accuracy is chance, so its int8 metric delta means nothing.
        variant.append("serve.int8_max_drop=1.0")
    cfg = compose_config([f"workspace={workspace}", *variant])
    registry, serve = build_registry(cfg), serve_config(cfg)
    deadline_ms = args.deadline_ms or serve.settings.deadline_ms
    name = args.model.split("@", 1)[0]
    model_dir = registry.download(registry.resolve(args.model), tmp / "naive")
    say(
        f"workspace {workspace}; variant {args.variant} (naive runs the PyTorch module); "
        f"capture {'on' if capture else 'off'}; deadline {deadline_ms} ms"
    )

    logs = tmp / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:

        def ours(label: str, max_batch: int, *overrides: str) -> Server:
            port = free_port()
            command = serve_command(
                args.model,
                workspace,
                port,
                f"serve.max_batch={max_batch}",
                f"serve.capture={str(capture).lower()}",
                f"serve.deadline_ms={deadline_ms}",
                *variant,
                *overrides,
            )
            routes = (f"/v1/models/{name}/predict", "/readyz")
            return start(stack, label, command, port, routes, logs)

        def this_script(label: str, flags: list[str], ready: str) -> Server:
            """A baseline server: this script again, with one of its hidden server flags."""
            port = free_port()
            command = [sys.executable, str(Path(__file__).resolve()), *flags, "--port", str(port)]
            return start(stack, label, command, port, ("/predict", ready), logs)

        servers = {
            "ours": ours("ours", 32),
            "naive": this_script("naive", ["--naive-server", str(model_dir)], "/healthz"),
        }
        say("starting ours (serve.max_batch=32) and naive (FastAPI + PyTorch)")
        threads = serve.settings.threads
        served = load_served(registry, args.model, tmp / "bare", threads, serve.variant)
        warm_up(served)
        # The same cache directory: the model's files are copied once, each session opens them.
        per_core = [
            load_served(registry, args.model, tmp / "bare", 1, serve.variant)
            for _ in range(default_threads())
        ]
        for one in per_core:
            warm_up(one)
        wait_ready(list(servers.values()))
        # After `ours` has filled the workspace's model cache, so the two never write it at once.
        servers["ours-b1"] = ours("ours-b1", 1)
        servers["ours-w2"] = ours("ours-w2", 32, "serve.workers=2", "serve.threads=1")
        say("starting ours-b1 (serve.max_batch=1) and ours-w2 (serve.workers=2 serve.threads=1)")
        flags = ["--model", args.model, "--litserve-workspace", str(workspace)]
        flags += [f"--litserve-override={o}" for o in variant]
        servers["litserve"] = this_script("litserve", flags, "/health")
        say("starting litserve (max_batch_size=32, batch_timeout 1 ms)")
        servers["floor"] = this_script("floor", ["--floor-server"], "/")
        say("starting floor (uvicorn answering a constant)")
        wait_ready([servers[k] for k in ("ours-b1", "ours-w2", "litserve", "floor")])
        bodies = example_bodies(servers["ours"], name)
        adapter = served.adapter
        rows = [adapter.decode(validate_json(adapter.request_type, b)) for b in bodies]
        bare = Bare(served, rows, bodies, per_core)
        say(f"{len(bodies)} example requests of {len(bodies[0])} bytes; warming up")
        for server in servers.values():
            closed_loop(server, bodies, args.clients, 1.0, args.max_requests)
        return measure(args, servers, bare, bodies, name, deadline_ms / 1000)


@dataclass
class Row:
    """One line of the table: the two subjects' values as printed, their ratio (each round's
    too, when there were rounds) and the aim ("≥ x", "≤ x" or "-")."""

    title: str
    ours: str
    base: str
    ratio: float
    each: list[float]
    aim: str

    def cells(self) -> tuple[str, str, str, str, str]:
        """measurement | ours | baseline | ratio (rounds) | aim."""
        return self.title, self.ours, self.base, spread(self.ratio, self.each), self.aim

    def target(self) -> tuple[str, float] | None:
        """The aim as (comparison, value), or None for an information row."""
        return None if self.aim == "-" else (self.aim[0], float(self.aim[1:]))

    def met(self) -> bool | None:
        """Whether the ratio meets the aim (None: no aim)."""
        aim = self.target()
        if aim is None:
            return None
        return self.ratio >= aim[1] if aim[0] == "≥" else self.ratio <= aim[1]


def measure(
    args: argparse.Namespace,
    servers: dict[str, Server],
    bare: Bare,
    bodies: list[bytes],
    name: str,
    deadline: float,
) -> list[Row]:
    """The five measurements; returns the table rows."""
    slice_seconds = args.seconds / args.rounds
    labels = ["ours", "bare", "bare-cores", "inproc", "ours-b1", "ours-w2"]
    labels += ["naive", "litserve", "floor"]  # the baseline servers
    labels += ["ours-1", "ours-b1-1"]  # one client: lone requests, batching on and off
    rounds: dict[str, list[Tally]] = {k: [] for k in labels}  # each round's slice, kept apart
    bare_batch: list[int] = []  # the mean batch `ours` formed in its first slice
    say(
        f"closed loop: {args.clients} client threads, {args.rounds} rounds of "
        f"{slice_seconds:g} s per subject; open loop: {args.connections} connections at 70 %, "
        f"{args.overload_connections} in overload; deadline {deadline * 1000:.0f} ms"
    )

    def served(label: str, clients: int | None = None) -> Callable[[], Tally]:
        def go() -> Tally:
            server = servers[label]
            before = batch_stats(server, name) if label.startswith("ours") else np.zeros(2)
            n = clients or args.clients
            tally = closed_loop(server, bodies, n, slice_seconds, args.max_requests)
            if label.startswith("ours"):
                tally.batches = batch_stats(server, name) - before
            return tally

        return go

    def in_process(full_path: bool) -> Callable[[], Tally]:
        def go() -> Tally:
            if not bare_batch:
                mean = rounds["ours"][0].mean_batch
                bare_batch.append(max(1, round(mean)) if np.isfinite(mean) else 1)
            return bare.run(bare_batch[0], slice_seconds, args.max_requests, full_path)

        return go

    def per_core() -> Tally:
        return bare.run_per_core(bare_batch[0], slice_seconds, args.max_requests)

    order: list[tuple[str, Callable[[], Tally]]] = [
        ("ours", served("ours")),
        ("bare", in_process(False)),
        ("bare-cores", per_core),
        ("ours-b1", served("ours-b1")),
        ("ours-w2", served("ours-w2")),
        ("floor", served("floor")),
        ("naive", served("naive")),
        ("litserve", served("litserve")),
        ("inproc", in_process(True)),
        ("ours-1", served("ours", clients=1)),
        ("ours-b1-1", served("ours-b1", clients=1)),
    ]

    def alone(label: str) -> contextlib.AbstractContextManager[None]:
        """Measure `label` with LitServe's idle polling paused, unless it is LitServe."""
        return contextlib.nullcontext() if label == "litserve" else paused(servers["litserve"])

    for r in range(args.rounds):
        # The two one-client runs take turns going first: run in one order, batching on
        # (always first) read 1.13 of off, and 1.05 when the order alternated.
        turn = order if r % 2 == 0 else [*order[:-2], order[-1], order[-2]]
        for label, go in turn:
            with alone(label):
                tally = go()
            rounds[label].append(tally)
            say(f"round {r + 1}/{args.rounds} {label:<8} {describe(tally)}")
    tallies = {k: summed(slices) for k, slices in rounds.items()}
    for label in ("ours", "ours-b1", "ours-w2", "naive", "litserve", "floor"):
        say(f"{label:<8} {tallies[label].cpu_line()}")
    peak = tallies["ours"].rate
    say(f"peak (ours, closed loop, {args.clients} clients) {peak:.0f} req/s")

    def open_run(
        rate: float,
        connections: int,
        send_deadline: bool = True,
        label: str = "ours",
        seconds: float | None = None,
    ) -> OpenLoop:
        with collector_paused(), alone(label):
            return asyncio.run(
                open_loop(
                    servers[label],
                    bodies,
                    rate,
                    seconds or args.seconds,
                    deadline,
                    connections,
                    send_deadline,
                )
            )

    rate = 0.7 * peak
    # At least twice a closed-loop slice, and long enough for `--steady-answers` answers per
    # round: at 37 req/s (fp32 resnet18) 5 s gave 185, and a p99 of 185 swung 0.97-1.52
    # between runs.
    steady_seconds = max(2 * slice_seconds, args.steady_answers / rate)
    say(
        f"open loop at 70 % of peak: {rate:.0f} req/s, ours and ours-b1 in {args.rounds} "
        f"interleaved rounds of {steady_seconds:.3g} s"
    )
    steady_slices: dict[str, list[OpenLoop]] = {"ours": [], "ours-b1": []}
    for r in range(args.rounds):
        turns = list(steady_slices) if r % 2 == 0 else list(reversed(steady_slices))
        for label in turns:  # each goes first in half the rounds
            slices = steady_slices[label]
            slices.append(open_run(rate, args.connections, label=label, seconds=steady_seconds))
            say(f"round {r + 1}/{args.rounds} {label:<8} {describe(slices[-1].tally)}")
            say(f"  {slices[-1].sent_line()}")
    steady, steady_b1 = (summed([o.tally for o in steady_slices[k]]) for k in steady_slices)
    say(f"70 %: ours {steady.cpu_line()}; ours-b1 {steady_b1.cpu_line()}")

    rate = args.overload * peak
    overloads: dict[bool, list[OpenLoop]] = {True: [], False: []}
    for n in range(args.overload_runs):  # alternating, so background load hits both alike
        for send_deadline in (True, False):
            how = "with" if send_deadline else "without"
            say(
                f"open loop at {args.overload:g}× peak: {rate:.0f} req/s for {args.seconds:g} s, "
                f"{how} X-Deadline-Ms (run {n + 1}/{args.overload_runs})"
            )
            over = open_run(rate, args.overload_connections, send_deadline)
            say(f"  {describe(over.tally)}")
            say(f"  {over.sent_line()}; {over.tally.cpu_line()}")
            say(
                f"  from the send: 200 p50 {over.service.ms(50):.1f} ms, p99 "
                f"{over.service.ms(99):.1f} ms; 429 p50 {over.service.ms(50, 429):.1f} ms "
                f"({over.service.statuses[429]} of them); goodput {over.goodput:.0f} req/s"
            )
            overloads[send_deadline].append(over)

    runs = [
        (f"70 % ({label}, round {n + 1})", o)
        for label, slices in steady_slices.items()
        for n, o in enumerate(slices)
    ] + [
        (f"{args.overload:g}× {'with' if k else 'without'} X-Deadline-Ms", o)
        for k, results in overloads.items()
        for o in results
    ]
    for which, result in runs:
        if result.behind(deadline):
            client = result.tally.client_cpu / (result.tally.wall or result.tally.seconds)
            say(
                f"note: at {which} requests waited in the client for a free connection "
                f"(p50 above 10 % of the deadline) while the client used {client:.2f} core: "
                + (
                    "every connection was waiting for an answer, so the server's pace, not "
                    "the generator's, set what was sent"
                    if client < 0.5
                    else "the generator may have been short of CPU, so that row mixes the "
                    "server's limits with the client's"
                )
            )
    for label, server in servers.items():
        if server.process.poll() is not None:
            say(f"warning: {label} exited early ({server.process.returncode}):\n{server.tail()}")

    per_s = "{:.0f} req/s".format
    in_ms = "{:.1f} ms".format

    def compare(title: str, subject: str, base: str, aim: str, q: float | None = None) -> Row:
        """A closed-loop row: both subjects' rate (or latency percentile `q`), their ratio
        and its range over the rounds (each round's slices ran back to back: the load moved
        them alike)."""

        def value(tally: Tally) -> float:
            return tally.ms(q) if q is not None else tally.rate

        show = in_ms if q is not None else per_s
        whole = value(tallies[subject]) / value(tallies[base])
        each = [value(a) / value(b) for a, b in zip(rounds[subject], rounds[base], strict=True)]
        return Row(
            title, show(value(tallies[subject])), show(value(tallies[base])), whole, each, aim
        )

    def goodput(send_deadline: bool, title: str) -> Row:
        """Mean goodput ÷ peak over the overload runs, and its range over them."""
        goods = [o.goodput for o in overloads[send_deadline]]
        each = [g / peak for g in goods]
        mean = float(np.mean(goods))
        return Row(title, per_s(mean), per_s(peak), mean / peak, each, "≥ 0.9")

    steady_p99, steady_p50 = steady.ms(99), steady.ms(50)
    steady_each = [
        a.tally.ms(99) / b.tally.ms(99)
        for a, b in zip(steady_slices["ours"], steady_slices["ours-b1"], strict=True)
    ]
    overload = f"{args.overload:g}× peak ÷ peak"
    return [
        compare(
            f"1. served ÷ bare ORT session.run (batch {bare_batch[0]})", "ours", "bare", "≥ 0.85"
        ),
        compare("   (info) served ÷ in-process path, no HTTP", "ours", "inproc", "-"),
        compare(
            "   (info) bare ORT, a 1-thread session per core ÷ one session",
            "bare-cores",
            "bare",
            "-",
        ),
        compare("   (info) uvicorn answering a constant ÷ bare ORT", "floor", "bare", "-"),
        compare("   (info) served ÷ uvicorn answering a constant", "ours", "floor", "-"),
        compare("2. served ÷ naive FastAPI + PyTorch", "ours", "naive", "≥ 3"),
        compare(
            "   (info) bare ORT ÷ naive: the most any ORT server reaches", "bare", "naive", "-"
        ),
        compare("   (info) serve.workers=2 ÷ naive", "ours-w2", "naive", "-"),
        compare(
            "   (info) serve.workers=2 ÷ bare ORT, a session per core", "ours-w2", "bare-cores", "-"
        ),
        compare("3. batching on ÷ off: throughput", "ours", "ours-b1", "≥ 1.0"),
        compare("3. batching on ÷ off: p99 (closed loop)", "ours", "ours-b1", "≤ 1.0", q=99),
        compare("3. batching on ÷ off: p50, one client", "ours-1", "ours-b1-1", "≤ 1.0", q=50),
        Row(
            "3. batching on ÷ off: p99 at 70 % of peak",
            in_ms(steady_p99),
            in_ms(steady_b1.ms(99)),
            steady_p99 / steady_b1.ms(99),
            steady_each,
            "≤ 1.0",
        ),
        Row(
            f"4. p99 ÷ p50 at 70 % peak ({0.7 * peak:.0f} req/s)",
            in_ms(steady_p99),
            in_ms(steady_p50),
            steady_p99 / steady_p50,
            [],
            "-",
        ),
        goodput(True, f"5. goodput at {overload} (clients send X-Deadline-Ms)"),
        goodput(False, f"5. goodput at {overload} (clients send no deadline)"),
        compare("6. served ÷ LitServe: throughput (closed loop)", "ours", "litserve", "≥ 1.0"),
        compare("6. served ÷ LitServe: p99 (closed loop)", "ours", "litserve", "≤ 1.0", q=99),
    ]


def summed(slices: list[Tally]) -> Tally:
    """One tally of all `slices`."""
    total = Tally()
    for tally in slices:
        total.add(tally)
    return total


def spread(whole: float, each: list[float]) -> str:
    """`whole`, and with several parts the range of `each` (how far the load moved them)."""
    digits = 3 if whole < 0.1 else 2
    text = f"{whole:.{digits}f}"
    return text if len(each) < 2 else f"{text} ({min(each):.{digits}f}-{max(each):.{digits}f})"


def describe(tally: Tally) -> str:
    """Rate, latency percentiles and any non-200 answers of a tally."""
    text = f"{tally.rate:8.0f} req/s"
    if tally.latencies.get(200):
        text += f", p50 {tally.ms(50):.1f} ms, p99 {tally.ms(99):.1f} ms"
    if np.isfinite(tally.mean_batch):
        text += f", mean batch {tally.mean_batch:.2f}"
    names = {TIMEOUT: "timeout", FAILED: "failed", EXPIRED: "expired in client"}
    others = {names.get(s, str(s)): n for s, n in sorted(tally.statuses.items()) if s != 200}
    if others:
        text += f", other answers {others}"
    return text


def print_table(rows: list[Row]) -> str:
    """Print measurement | ours | baseline | ratio | aim; returns the table's text."""
    header = ("measurement", "ours", "baseline", "ratio (rounds)", "aim")
    cells = [header, *(row.cells() for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(5)]
    line = " | ".join(
        f"{{:<{widths[0]}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)
    )
    lines = [line.format(*header), "-+-".join("-" * w for w in widths)]
    lines += [line.format(*row) for row in cells[1:]]
    text = "\n".join(lines) + "\n"
    print(f"\n{text}")
    return text


def plot_rows(rows: list[Row], path: Path, title: str) -> None:
    """Each ratio as a bar on a log axis (its range over the rounds as a whisker), the aim as
    a tick: green where it is met, red where not, grey for information rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.arange(len(rows))[::-1]
    colours = {True: "tab:green", False: "tab:red", None: "tab:gray"}
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(rows) + 1.4))
    for yi, row in zip(y, rows, strict=True):
        low, high = (min(row.each), max(row.each)) if len(row.each) > 1 else (row.ratio,) * 2
        ax.barh(yi, row.ratio, color=colours[row.met()], alpha=0.75, height=0.6)
        ax.plot([low, high], [yi, yi], color="black", linewidth=1.2)
        aim = row.target()
        if aim is not None:
            ax.plot([aim[1]] * 2, [yi - 0.4, yi + 0.4], color="black", linewidth=2.5)
        ax.annotate(f" {row.ratio:.3g}", (max(row.ratio, high), yi), va="center", fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_yticks(y, [row.title.strip() for row in rows], fontsize=8)
    ax.set(xlabel="ratio, log scale (black tick: the aim; whisker: range over the rounds)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
