"""Goodput at overload of this checkout's server against another source tree's, side by side.

Both servers (`modelcycle serve twins@champion`, capture on) serve one throwaway twins
workspace on 127.0.0.1: "ours" from this checkout, "baseline" from `--baseline-src` (the
`src` folder of another checkout, e.g. `git worktree add /tmp/before REV`, run through
PYTHONPATH). Both run from a source folder the same way: an A/B in which only one side ran
from the editable install read a 10 % difference that vanished once both ran from copies.

Each round measures both closed-loop peaks (8 clients), then runs the open loop of
`bench/serving.py` at `--overload`× the mean peak, with clients that send X-Deadline-Ms and
clients that do not, the two servers taking turns at going first. Printed: goodput ÷ peak of
each, and ours ÷ baseline, for each round and in all; every loop is bounded in time.

    python bench/overload_ab.py --baseline-src /tmp/before/src [--rounds 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

import numpy as np

import serving as bench  # bench/serving.py: a script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    bench.stop_on_sigterm()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-src", type=Path, required=True, help="another tree's src/")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/qtim")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="per overload run")
    parser.add_argument("--overload", type=float, default=4.0, help="× the mean peak")
    parser.add_argument("--connections", type=int, default=512)
    args = parser.parse_args()
    baseline = args.baseline_src.resolve()
    if not (baseline / "modelcycle" / "__init__.py").is_file():
        parser.error(f"--baseline-src {baseline}: no modelcycle package there; give a src/ folder")
    if min(args.rounds, args.seconds, args.overload, args.connections) <= 0:
        parser.error("--rounds, --seconds, --overload and --connections must be positive")
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        run(args, baseline, Path(tmp))


def run(args: argparse.Namespace, baseline: Path, tmp: Path) -> None:
    """Build the workspace, start both servers, measure, print."""
    bench.say(f"building a throwaway workspace from {args.data.resolve()}")
    workspace = bench.build_workspace(args.data.resolve(), tmp)
    logs = tmp / "logs"
    logs.mkdir()
    trees = {"ours": REPO / "src", "baseline": baseline}
    with contextlib.ExitStack() as stack:
        servers = {}
        for label, src in trees.items():
            port = bench.free_port()
            command = bench.serve_command("twins@champion", workspace, port, "serve.capture=true")
            routes = ("/v1/models/twins/predict", "/readyz")
            env = {"PYTHONPATH": str(src)}
            servers[label] = bench.start(stack, label, command, port, routes, logs, env)
        bench.wait_ready(list(servers.values()))
        bodies = bench.example_bodies(servers["ours"], "twins")
        for server in servers.values():  # warm-up
            bench.closed_loop(server, bodies, 8, 1.0, 200_000)
        goodput: dict[tuple[str, bool], list[float]] = {}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            peaks = {k: bench.closed_loop(servers[k], bodies, 8, 2.5, 200_000).rate for k in order}
            peak = float(np.mean(list(peaks.values())))
            shown = ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
            bench.say(f"round {r + 1}: peaks {shown} req/s; overload at {args.overload * peak:.0f}")
            for deadline in (True, False):
                for label in order:
                    with bench.collector_paused():
                        result = asyncio.run(
                            bench.open_loop(
                                servers[label],
                                bodies,
                                args.overload * peak,
                                args.seconds,
                                5.0,
                                args.connections,
                                deadline,
                            )
                        )
                    share = result.goodput / peaks[label]
                    goodput.setdefault((label, deadline), []).append(share)
                    how = "with" if deadline else "without"
                    bench.say(f"  {label:<8} {how} X-Deadline-Ms: goodput ÷ peak {share:.2f}")
        print_table(goodput)


def print_table(goodput: dict[tuple[str, bool], list[float]]) -> None:
    """Goodput ÷ peak of each server, per round and in all, and ours ÷ baseline."""
    print(f"\n{'goodput ÷ own peak':<34}{'ours':>8}{'baseline':>10}{'ratio':>8}  rounds")
    for deadline in (True, False):
        ours, base = goodput[("ours", deadline)], goodput[("baseline", deadline)]
        rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(ours, base, strict=True))
        name = "clients send X-Deadline-Ms" if deadline else "clients send no deadline"
        mean_ours, mean_base = float(np.mean(ours)), float(np.mean(base))
        ratio = mean_ours / mean_base
        print(f"{name:<34}{mean_ours:>8.2f}{mean_base:>10.2f}{ratio:>8.2f}  {rounds}")


if __name__ == "__main__":
    main()
