"""The first seconds after /readyz: a server with drift checks ÷ one without, side by side.

A version's drift reference is the model run over the version's reference sample (400 images
for an image model). The server computes it while the version loads, before /readyz turns
true; before that change the first drift check computed it right after /readyz, on the
serving session, beside the first requests. This bench builds an untrained resnet18 image
model with a 400-image reference, then starts its server with drift checks (the default,
every 60 s) and without (`monitor.interval_seconds=0`: no reference at all), one server at a
time, alternating, `--rounds` times each. From the moment a server answers /readyz, an open
loop sends `--rate` requests per second for `--seconds`; the table gives the time to
readiness and the p50 and p99 of those first answers (from the scheduled send), and the
ratio with checks ÷ without.

    python bench/serving_startup.py [--variant int8] [--rate 60] [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from serving import (
    Tally,
    build_image_workspace,
    free_port,
    open_loop,
    say,
    start,
    wait_ready,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="of load after /readyz")
    parser.add_argument("--rounds", type=int, default=2, help="start-ups of each server")
    parser.add_argument("--reference-rows", type=int, default=400)
    args = parser.parse_args()
    for name in ("rate", "seconds", "rounds", "reference_rows"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        say(f"building an untrained resnet18 with a {args.reference_rows}-image reference")
        per_class = (args.reference_rows + 12) // 5 + 2  # the reference and held-out rows
        workspace = build_image_workspace(tmp, "resnet18", 224, args.reference_rows, per_class)
        logs = tmp / "logs"
        logs.mkdir()
        bodies: list[bytes] = []
        results: dict[str, tuple[list[float], Tally]] = {
            "checks": ([], Tally()),
            "none": ([], Tally()),
        }
        for round_ in range(args.rounds):
            order = ["checks", "none"] if round_ % 2 == 0 else ["none", "checks"]
            for label in order:
                interval = 60.0 if label == "checks" else 0.0
                with contextlib.ExitStack() as stack:
                    port = free_port()
                    command = [
                        sys.executable, "-m", "modelcycle", "serve", "image_rice@champion",
                        f"workspace={workspace}", f"serve.port={port}",
                        f"serve.variant={args.variant}", "serve.int8_max_drop=1.0",
                        "serve.reload_seconds=0", f"monitor.interval_seconds={interval}",
                    ]  # fmt: skip
                    routes = ("/v1/models/image_rice/predict", "/readyz")
                    started = time.monotonic()
                    server = start(stack, f"{label}-{round_}", command, port, routes, logs)
                    ready = wait_ready([server], poll=0.02)[server.name] - started
                    if not bodies:  # the held-out examples, fetched after the first start-up
                        examples = httpx.get(f"{server.url}/v1/models/image_rice/examples")
                        bodies = [
                            json.dumps(e["request"]).encode() for e in examples.json()["examples"]
                        ]
                    run = asyncio.run(
                        open_loop(server, bodies, args.rate, args.seconds, 5.0, connections=8)
                    )
                    results[label][0].append(ready)
                    results[label][1].add(run.tally)
                    say(
                        f"round {round_ + 1}/{args.rounds} {label:<6} ready after {ready:.1f} s; "
                        f"then p50 {run.tally.ms(50):.1f} ms, p99 {run.tally.ms(99):.1f} ms, "
                        f"{run.tally.ok} of {sum(run.tally.statuses.values())} answered 200"
                    )
    (ready_on, on), (ready_off, off) = results["checks"], results["none"]
    print(
        f"\n{args.variant}, {args.rate:g} req/s for {args.seconds:g} s from /readyz, "
        f"{args.rounds} start-ups each"
    )
    print(f"{'':<22}{'drift checks':>14}{'none':>10}{'ratio':>8}")
    mean_on, mean_off = sum(ready_on) / len(ready_on), sum(ready_off) / len(ready_off)
    for label, a, b in (
        ("ready after (s, mean)", mean_on, mean_off),
        ("p50 ms", on.ms(50), off.ms(50)),
        ("p99 ms", on.ms(99), off.ms(99)),
    ):
        print(f"{label:<22}{a:>14.1f}{b:>10.1f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
