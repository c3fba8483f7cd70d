"""Real processes on loopback for tests: a `modelcycle serve` and a Prometheus.

Ports are chosen free, every wait is bounded, and a process is always killed on exit; a
failure message carries the tail of the process's output.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT = 90.0  # seconds: loading torch/onnxruntime on a busy 2-core machine


@dataclass
class Process:
    """A started program, its URL and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self, lines: int = 40) -> str:
        """The tail of the process's output, for failure messages."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        tail = "\n".join(text.splitlines()[-lines:])
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


@contextmanager
def started(command: Sequence[str], log: Path, url: str, ready_path: str) -> Iterator[Process]:
    """Start `command`, wait until GET `url + ready_path` answers 200, always kill it after."""
    env = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_API_KEY"}
    with log.open("wb") as out:
        popen = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )
    process = Process(popen, url, log)
    try:
        _wait_ready(process, ready_path)
        yield process
    finally:
        if popen.poll() is None:
            popen.terminate()
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                popen.kill()
        popen.wait(timeout=30)


def _wait_ready(process: Process, path: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=process.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.process.poll() is not None:
                pytest.fail(f"{process.url} exited before it was ready; {process.output()}")
            try:
                if client.get(path).status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.25)
    pytest.fail(f"{process.url}{path} was not 200 within {READY_TIMEOUT:.0f} s; {process.output()}")


def serve_command(root: Path, port: int, *extra: str) -> list[str]:
    """`modelcycle serve twins@champion` on loopback `port` with the workspace `root`."""
    return [
        sys.executable,
        "-m",
        "modelcycle",
        "serve",
        "twins@champion",
        f"workspace={root}",
        f"serve.port={port}",
        "serve.host=127.0.0.1",
        *extra,
    ]
