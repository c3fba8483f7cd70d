"""How long the `modelcycle` command takes before it does anything: help, completion, light work.

Shell completion runs the program at every Tab, and `--help` is how people meet a command:
both should cost about what starting Python and Typer costs. The command imports each
subsystem (torch, Lightning, MLflow, FastAPI ...) only where a command needs it; this bench
measures, side by side in alternating rounds, fresh interpreters running

- the floor: the help of a two-command Typer app with nothing else, the least a Typer
  command's help can cost;
- the eager import: every module the command imported at its top before it went lazy;
- `modelcycle --help`, `modelcycle serve --help`, a completion request (`serve` after
  `modelcycle se<Tab>`), `modelcycle tasks`, and `modelcycle config` (which composes the
  configuration and so imports its settings' subsystems).

It prints each one's median wall time and its ratio to the floor and to the eager import,
with the range over the rounds in brackets. Aim: help and completion ≤ 2× the floor.

With `--workspace DIR` (one holding an exported twins@champion, e.g. after `modelcycle
pipeline twins`), it also times `modelcycle serve twins@champion` from its start until
/readyz answers 200, beside the same server started with torch, Lightning and the tasks'
training code imported first (what a server imported before it used ONNX Runtime alone).

    python bench/cli_startup.py [--rounds 5] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serving import free_port, start, wait_ready

#: What the command imported at its top before each command imported its own subsystems.
EAGER = (
    "modelcycle.config",
    "modelcycle.evaluate",
    "modelcycle.models.image_classifier",
    "modelcycle.monitoring.drift",
    "modelcycle.pipeline",
    "modelcycle.serving.server",
    "modelcycle.serving.workers",
    "modelcycle.sweep",
)

BARE = (
    "import typer\n"
    "app = typer.Typer()\n"
    "app.command('one')(lambda: None)\n"
    "app.command('two')(lambda: None)\n"
    "app()"
)
#: The installed console script, as people run it (and completion calls it).
COMMAND = [str(Path(sys.executable).parent / "modelcycle")]
CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "floor: a bare Typer app's help": ([sys.executable, "-c", BARE, "--help"], {}),
    "eager import (the old top)": ([sys.executable, "-c", f"import {', '.join(EAGER)}"], {}),
    "modelcycle --help": ([*COMMAND, "--help"], {}),
    "modelcycle serve --help": ([*COMMAND, "serve", "--help"], {}),
    # What the completion script of bash sends at `modelcycle se<Tab>`.
    "completion of 'modelcycle se'": (
        COMMAND,
        {
            "_MODELCYCLE_COMPLETE": "complete_bash",
            "COMP_WORDS": "modelcycle se",
            "COMP_CWORD": "1",
        },
    ),
    "modelcycle tasks": ([*COMMAND, "tasks"], {}),
    "modelcycle config": ([*COMMAND, "config"], {}),
}


def wall(command: list[str], extra: dict[str, str]) -> float:
    """Seconds a fresh process takes to run `command` to its end (exit 0 required)."""
    started = time.perf_counter()
    done = subprocess.run(
        command, env={**os.environ, **extra}, capture_output=True, text=True, timeout=300
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")
    return seconds


#: The server of the old import graph: the training code loaded before the command runs.
SERVE_EAGER = (
    "import sys\n"
    "import lightning, torch, modelcycle.tasks.base, modelcycle.tasks.twins\n"
    "sys.argv = ['modelcycle', *sys.argv[1:]]\n"
    "from modelcycle.__main__ import main\n"
    "main()\n"
)
SERVED = "serve: until /readyz"
SERVED_EAGER = "serve, training code imported first"


def until_ready(command: list[str], workspace: Path) -> float:
    """Seconds from starting `command + serve twins@champion` until /readyz is 200."""
    port = free_port()
    args = ["serve", "twins@champion", f"workspace={workspace}", f"serve.port={port}"]
    routes = ("/v1/models/twins/predict", "/readyz")
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as logs:
        began = time.monotonic()
        server = start(stack, "serve", [*command, *args], port, routes, Path(logs))
        return wait_ready([server], poll=0.02)["serve"] - began  # stopped as the stack closes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each case, alternating")
    parser.add_argument("--workspace", type=Path, help="holds twins@champion: time serving")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    serving: dict[str, list[float]] = {SERVED: [], SERVED_EAGER: []}
    for number in range(1, args.rounds + 1):
        for name, (command, extra) in CASES.items():
            times[name].append(wall(command, extra))
        if args.workspace:
            serving[SERVED].append(until_ready(COMMAND, args.workspace.resolve()))
            first = [sys.executable, "-c", SERVE_EAGER]
            serving[SERVED_EAGER].append(until_ready(first, args.workspace.resolve()))
        print(f"round {number}/{args.rounds} done", file=sys.stderr, flush=True)
    floor = times["floor: a bare Typer app's help"]
    eager = times["eager import (the old top)"]
    print(f"{'case':34} {'median s':>9} {'÷ floor':>20} {'÷ eager import':>20}")
    for name, seconds in times.items():
        print(
            f"{name:34} {statistics.median(seconds):9.2f} "
            f"{ratio(seconds, floor):>20} {ratio(seconds, eager):>20}"
        )
    if args.workspace:
        print(f"\n{'case':36} {'median s':>9} {'÷ training code first':>22}")
        for name, seconds in serving.items():
            print(
                f"{name:36} {statistics.median(seconds):9.2f} "
                f"{ratio(seconds, serving[SERVED_EAGER]):>22}"
            )


def ratio(seconds: list[float], base: list[float]) -> str:
    """Median of the per-round ratios, with their range: rounds ran side by side."""
    each = [s / b for s, b in zip(seconds, base, strict=True)]
    return f"{statistics.median(each):.2f} ({min(each):.2f}-{max(each):.2f})"


if __name__ == "__main__":
    main()
