"""Does the server's background drift check move serving latency? Side by side, as ratios.

Two servers of the same model run at once: one never checks drift
(`monitor.interval_seconds=0`), the other checks every `--interval` seconds (far more often
than the default 60 s) on its newest `--window` captures. Closed-loop slices alternate between
them so background load hits both alike; the table gives p50, p99 and throughput and the
ratio with drift checks ÷ without.

    python bench/drift_overhead.py --data ../shared/data/qtim [--slices 6] [--seconds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import httpx

from serving import (
    Tally,
    build_workspace,
    closed_loop,
    free_port,
    say,
    serve_command,
    start,
    wait_ready,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="QTIM root")
    parser.add_argument("--slices", type=int, default=6, help="slices per server")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per slice")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5, help="drift check every s")
    parser.add_argument("--window", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        workspace = build_workspace(args.data.resolve(), tmp)
        logs = tmp / "logs"
        logs.mkdir()
        with contextlib.ExitStack() as stack:
            servers = {}
            for name, interval in (("off", 0.0), ("on", args.interval)):
                port = free_port()
                command = serve_command(
                    "twins@champion", workspace, port, "serve.threads=1",
                    f"monitor.interval_seconds={interval}", f"monitor.window={args.window}",
                    "monitor.min_captures=30",
                )  # fmt: skip
                routes = ("/v1/models/twins/predict", "/readyz")
                servers[name] = start(stack, name, command, port, routes, logs)
            wait_ready(list(servers.values()))
            url = servers["on"].url
            examples = httpx.get(f"{url}/v1/models/twins/examples").json()["examples"]
            bodies = [json.dumps(e["request"]).encode() for e in examples]
            tallies = {name: Tally() for name in servers}
            for i in range(args.slices):
                for name, server in servers.items():
                    part = closed_loop(server, bodies, args.clients, args.seconds, 10**6)
                    tallies[name].add(part)
                say(f"slice {i + 1}/{args.slices} done")
            drift = httpx.get(f"{url}/v1/models/twins/drift").json()
            checks = httpx.get(f"{url}/metrics").text.count("modelcycle_drift_checks_total{")
    off, on = tallies["off"], tallies["on"]
    status = f"last status {drift['status']} ({drift['n_current']} captures)"
    print(f"drift checks every {args.interval:g} s on {args.window} captures; {status}")
    print(f"drift check series in /metrics: {checks}")
    print(f"{'':<14}{'no checks':>12}{'checks':>12}{'ratio':>8}")
    for label, a, b in (
        ("req/s", off.rate, on.rate),
        ("p50 ms", off.ms(50), on.ms(50)),
        ("p99 ms", off.ms(99), on.ms(99)),
    ):
        print(f"{label:<14}{a:>12.1f}{b:>12.1f}{b / a:>8.2f}")


if __name__ == "__main__":
    main()
