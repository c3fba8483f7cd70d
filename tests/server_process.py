"""A real `modelcycle serve` process for tests: start it on a free loopback port, wait for
/readyz, always stop it. Shared by the serving, monitoring and deployment tests."""

from __future__ import annotations

import os
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

READY_TIMEOUT = 60.0  # seconds for the process to load, warm up and answer /readyz


@dataclass
class Server:
    """A running `modelcycle serve` process and where its output goes."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        """The tail of the process's stdout and stderr, for failure messages."""
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        lines = [line for line in text.splitlines() if not line.endswith('" 200 OK')]
        tail = "\n".join(lines[-60:])
        return f"exit code {self.process.poll()}; server output (200 OK lines left out):\n{tail}"


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    root: Path, log: Path, reference: str = "twins@champion", extra: tuple[str, ...] = ()
) -> Iterator[Server]:
    """Start `modelcycle serve` on a free port, wait for /readyz, always kill it afterwards."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "modelcycle",
        "serve",
        reference,
        f"workspace={root}",
        f"serve.port={port}",
        "serve.host=127.0.0.1",
        *extra,
    ]
    with running_command(command, port, log) as server:
        yield server


@contextmanager
def running_command(
    command: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run `command` (a server that will listen on `port`), wait for /readyz, always kill it.

    The environment is this process's without `MODELCYCLE_API_KEY`, updated with `env`.
    """
    environ = {k: v for k, v in os.environ.items() if k != "MODELCYCLE_API_KEY"}
    environ.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=log.parent
        )
        server = Server(process, f"http://127.0.0.1:{port}", log)
        try:
            wait_ready(server)
            yield server
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


def wait_ready(server: Server) -> None:
    """Poll /readyz until 200; fail with the server's output if it exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    with httpx.Client(base_url=server.url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                pytest.fail(f"the server exited before it was ready; {server.output()}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
    pytest.fail(f"/readyz was not 200 within {READY_TIMEOUT:.0f} s; {server.output()}")
