"""A version's first seconds: drift checks ÷ none, at start-up and across a hot reload.

A version's drift reference is the model run over the version's reference sample (400 images
for an image model). A server computes it at full speed while it starts, before /readyz turns
true; after a hot reload, once the new version serves, between the live batches. This bench
builds an untrained resnet18 image model with a 400-image reference, registered twice
(versions 1 and 2, the same weights), and serves it with drift checks (the default, every
60 s) and without (`monitor.interval_seconds=0`: no reference at all), one server at a time,
alternating, `--rounds` times each:

- start-up: from the moment a server answers /readyz, an open loop sends `--rate` requests
  per second for `--seconds`. The table gives the time to readiness, and the p50 and p99 of
  those first answers (from the scheduled send).
- reload: a server of version 1 polls its alias every 0.5 s under the same open loop; 2 s
  in, champion moves to version 2 and the load goes on for `--reload-seconds`. The server
  loads and warms version 2, swaps, and (with checks) computes its reference. The table
  gives the time from the move to the swap and to the reference (their log lines, read
  every 0.1 s), and the p50, p99 and maximum of the requests sent from the move until 1 s
  after the last of them, beside the p99 of those sent before the move. With `--workers N`
  (`serve.workers=N serve.threads=1`) each worker reloads on its own: the round lasts until
  every one has swapped and computed its reference, and the table adds when the last one
  swapped.

Every request's latency over time goes into a plot (`--out`), with the moves, swaps and
references marked.

    python bench/serving_startup.py [--variant int8] [--rate 60] [--seconds 8] [--rounds 2]
                                    [--scenario both] [--reload-seconds 25] [--workers 1]
                                    [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from modelcycle.tracking import TrackingSettings, tracking_uri
from serving import (
    OpenLoop,
    Server,
    build_image_workspace,
    free_port,
    open_loop,
    say,
    serve_command,
    start,
    stop_on_sigterm,
    wait_ready,
)

LABELS = ("checks", "none")  # drift checks every 60 s (the default), or none
MODEL = "image_rice"
MOVE_AFTER = 2.0  # seconds into the reload scenario's load when champion moves
AFTER_WORK = 1.0  # seconds after a reload's work a request still counts as overlapping it
REFERENCE = f"Drift reference of {MODEL} v2 ready"  # a worker's log line


@dataclass
class Round:
    """One server's run: its load, and when things happened (seconds on the load's clock)."""

    label: str
    run: OpenLoop
    ready: float = 0.0  # start-up: seconds from the process start to /readyz
    moved: float = float("nan")  # reload: when champion moved
    swapped: float = float("nan")  # reload: when the first worker swapped to version 2
    all_swapped: float = float("nan")  # reload: when every worker had
    settled: float = float("nan")  # reload: that, or when every new reference was ready

    def latencies(self, since: float = -np.inf, until: float = np.inf) -> np.ndarray:
        """Latencies (seconds) of the 200s scheduled in [since, until)."""
        return np.array(
            [lat for t, lat, status in self.run.timeline if status == 200 and since <= t < until]
        )

    @property
    def failed(self) -> int:
        """Requests answered anything but 200."""
        return sum(status != 200 for _, _, status in self.run.timeline)


@dataclass
class Scenario:
    """Rounds of both labels for one scenario."""

    name: str
    rounds: dict[str, list[Round]] = field(default_factory=lambda: {k: [] for k in LABELS})


def main() -> None:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=8.0, help="of load after /readyz")
    parser.add_argument("--rounds", type=int, default=2, help="servers of each label")
    parser.add_argument("--reference-rows", type=int, default=400)
    parser.add_argument("--scenario", default="both", choices=["start", "reload", "both"])
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (serve.workers; with more than one, serve.threads=1 each)",
    )
    parser.add_argument(
        "--reload-seconds", type=float, default=25.0, help="of load after the alias moves"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".modelcycle/reports/bench-serving-startup"),
        help="where the table (.txt) and the latency-over-time plot (.png) go",
    )
    args = parser.parse_args()
    for name in ("rate", "seconds", "rounds", "reference_rows", "reload_seconds", "workers"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0")
    scenarios = ["start", "reload"] if args.scenario == "both" else [args.scenario]
    done: list[Scenario] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        say(f"building an untrained resnet18 with a {args.reference_rows}-image reference")
        per_class = (args.reference_rows + 12) // 5 + 2  # the reference and held-out rows
        versions = 2 if "reload" in scenarios else 1
        workspace = build_image_workspace(
            tmp, "resnet18", 224, args.reference_rows, per_class, versions
        )
        bench = Bench(args, workspace, tmp / "logs")
        for scenario in scenarios:
            done.append(bench.start_up() if scenario == "start" else bench.reload())
    processes = f", {args.workers} workers of 1 thread each" if args.workers > 1 else ""
    header = (
        f"{args.variant}, {args.rate:g} req/s, {args.rounds} servers of each{processes}; "
        "latency from the scheduled send"
    )
    table = "\n".join([header, *(line for s in done for line in report(s))])
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".txt").write_text(table + "\n")
    plot(done, args.out.with_suffix(".png"), header)
    say(f"table and plot in {args.out}.txt and {args.out}.png")


class Bench:
    """Starts the servers of each scenario and runs their load."""

    def __init__(self, args: argparse.Namespace, workspace: Path, logs: Path) -> None:
        self.args, self.workspace, self.logs = args, workspace, logs
        logs.mkdir(exist_ok=True)
        self.bodies: list[bytes] = []

    def start_up(self) -> Scenario:
        """From /readyz: the first `--seconds` of load on a freshly started server."""
        scenario = Scenario("start")
        for round_, label in self._turns():
            with contextlib.ExitStack() as stack:
                began = time.monotonic()
                server = self._server(stack, f"start-{label}-{round_}", label, reload=False)
                ready = wait_ready([server], poll=0.02)[server.name] - began
                run = asyncio.run(self._load(server, self.args.seconds))
            done = Round(label, run, ready=ready)
            scenario.rounds[label].append(done)
            lat = done.latencies() * 1000
            say(
                f"start-up {label:<6} ready after {ready:.1f} s; then p50 "
                f"{np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
                f"{done.failed} not 200"
            )
        return scenario

    def reload(self) -> Scenario:
        """Champion moves from version 1 to 2 under load; the server reloads and swaps."""
        scenario = Scenario("reload")
        with Promoter(self.workspace) as promoter:
            for round_, label in self._turns():
                promoter.move("1")
                with contextlib.ExitStack() as stack:
                    server = self._server(stack, f"reload-{label}-{round_}", label, reload=True)
                    wait_ready([server])
                    done = asyncio.run(self._reload_round(server, label, promoter))
                scenario.rounds[label].append(done)
                during = done.latencies(done.moved, done.settled + AFTER_WORK) * 1000
                say(
                    f"reload {label:<6} swapped {done.swapped - done.moved:.1f} s after the "
                    f"move, done {done.settled - done.moved:.1f} s after; meanwhile p50 "
                    f"{np.percentile(during, 50):.1f} ms, p99 "
                    f"{np.percentile(during, 99):.1f} ms, max {during.max():.1f} ms; "
                    f"{done.failed} not 200"
                )
        return scenario

    async def _reload_round(self, server: Server, label: str, promoter: Promoter) -> Round:
        load = asyncio.create_task(self._load(server, MOVE_AFTER + self.args.reload_seconds))
        await asyncio.sleep(MOVE_AFTER + 0.05)  # the load's clock starts 0.05 s in
        moved = time.monotonic()
        await asyncio.to_thread(promoter.move, "2")
        # Each worker logs its swap, then (with checks) its reference: the round is settled
        # once every worker has done both.
        workers, lines = self.args.workers, (f"{MODEL}@champion: version 1 → 2", REFERENCE)
        swapped = all_swapped = settled = float("nan")
        while not load.done():
            text = " ".join(server.log.read_bytes().decode(errors="replace").split())  # wraps
            now = time.monotonic()
            swaps, references = (text.count(line) for line in lines)
            swapped = now if swaps and swapped != swapped else swapped
            all_swapped = now if swaps >= workers and all_swapped != all_swapped else all_swapped
            if (swaps if label == "none" else references) >= workers:
                settled = now
                break
            await asyncio.sleep(0.1)
        run = await load
        if settled != settled:
            raise RuntimeError(
                f"{server.name} did not finish reloading within --reload-seconds "
                f"{self.args.reload_seconds:g}:\n{server.tail()}"
            )
        return Round(
            label, run, moved=moved - run.origin, swapped=swapped - run.origin,
            all_swapped=all_swapped - run.origin, settled=settled - run.origin,
        )  # fmt: skip

    def _turns(self) -> list[tuple[int, str]]:
        """(round, label) in order: each label goes first in every other round."""
        turns = []
        for round_ in range(self.args.rounds):
            order = LABELS if round_ % 2 == 0 else LABELS[::-1]
            turns += [(round_, label) for label in order]
        return turns

    def _server(self, stack: contextlib.ExitStack, name: str, label: str, reload: bool) -> Server:
        port = free_port()
        interval = 60.0 if label == "checks" else 0.0
        command = serve_command(
            f"{MODEL}@champion", self.workspace, port,
            f"serve.variant={self.args.variant}", "serve.int8_max_drop=1.0",
            f"serve.reload_seconds={0.5 if reload else 0}", f"monitor.interval_seconds={interval}",
            f"serve.workers={self.args.workers}",
            *(["serve.threads=1"] if self.args.workers > 1 else []),
        )  # fmt: skip
        routes = (f"/v1/models/{MODEL}/predict", "/readyz")
        return start(stack, name, command, port, routes, self.logs)

    async def _load(self, server: Server, seconds: float) -> OpenLoop:
        if not self.bodies:  # the held-out examples, fetched from the first server
            async with httpx.AsyncClient(base_url=server.url, timeout=10.0) as client:
                examples = (await client.get(f"/v1/models/{MODEL}/examples")).json()
            self.bodies = [json.dumps(e["request"]).encode() for e in examples["examples"]]
        return await open_loop(server, self.bodies, self.args.rate, seconds, 5.0, connections=8)


class Promoter:
    """A process that moves champion when told: the move's own cost, without an interpreter's
    start-up (seconds of CPU importing MLflow) or this process's GIL, beside the load."""

    SCRIPT = (
        "import sys\n"
        "from modelcycle.registry import Registry\n"
        "registry = Registry(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    registry.promote(sys.argv[2], version=line.strip(), reason='bench: reload')\n"
        "    print('moved', flush=True)\n"
    )

    def __init__(self, workspace: Path) -> None:
        uri = tracking_uri(TrackingSettings(), workspace)
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, uri, MODEL],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._expect("ready")

    def move(self, version: str) -> None:
        """Point champion at `version`; returns once it is committed."""
        assert self.process.stdin is not None
        self.process.stdin.write(version + "\n")
        self.process.stdin.flush()
        self._expect("moved")

    def _expect(self, word: str) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:  # skipping whatever else it prints
            if line.strip() == word:
                return
        raise RuntimeError(f"the promoting process ended ({self.process.wait()}) before {word!r}")

    def __enter__(self) -> Promoter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def report(scenario: Scenario) -> list[str]:
    """The scenario's table: each label's figures over its rounds, and checks ÷ none."""
    on, off = (scenario.rounds[k] for k in LABELS)
    rows: list[tuple[str, float, float]] = []
    if scenario.name == "start":
        title = "start-up: the first answers after /readyz"
        ready = [_mean(r.ready for r in rs) for rs in (on, off)]
        rows.append(("ready after (s, mean)", ready[0], ready[1]))
        for q in (50, 99):
            a, b = (np.concatenate([r.latencies() for r in rs]) for rs in (on, off))
            rows.append((f"p{q} ms", _ms(a, q), _ms(b, q)))
    else:
        title = (
            f"reload: requests sent from the move until {AFTER_WORK:g} s after the swap, or "
            "after the new reference"
        )
        swap = [_mean(r.swapped - r.moved for r in rs) for rs in (on, off)]
        rows.append(("move to swap (s, mean)", swap[0], swap[1]))
        if any(r.all_swapped != r.swapped for rs in (on, off) for r in rs):  # several workers
            every = [_mean(r.all_swapped - r.moved for r in rs) for rs in (on, off)]
            rows.append(("move to every worker's swap", every[0], every[1]))
        reference = _mean(r.settled - r.moved for r in on)
        rows.append(("move to reference (s, mean)", reference, float("nan")))  # none: no reference
        before = [np.concatenate([r.latencies(until=r.moved) for r in rs]) for rs in (on, off)]
        during = [
            np.concatenate([r.latencies(r.moved, r.settled + AFTER_WORK) for r in rs])
            for rs in (on, off)
        ]
        rows.append(("p99 ms before the move", _ms(before[0], 99), _ms(before[1], 99)))
        for q in (50, 99, 100):
            name = "max ms" if q == 100 else f"p{q} ms"
            rows.append((name, _ms(during[0], q), _ms(during[1], q)))
    failed = [sum(r.failed for r in rs) for rs in (on, off)]
    lines = ["", title, f"{'':<30}{'drift checks':>14}{'none':>10}{'ratio':>8}"]
    lines += [
        f"{n:<30}{a:>14.1f}" + (f"{b:>10.1f}{a / b:>8.2f}" if b == b else f"{'-':>10}{'-':>8}")
        for n, a, b in rows
    ]
    lines.append(f"{'answers not 200':<30}{failed[0]:>14}{failed[1]:>10}")
    return lines


def _mean(values: Iterable[float]) -> float:
    return float(np.mean(list(values)))


def _ms(seconds: np.ndarray, q: float) -> float:
    return float(np.percentile(seconds, q) * 1000) if len(seconds) else float("nan")


def plot(scenarios: list[Scenario], path: Path, title: str) -> None:
    """Latency of every request over time, a panel per scenario, moves and swaps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    colors = {"checks": "tab:red", "none": "tab:blue"}
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(10, 4 * len(scenarios)), squeeze=False)
    for ax, scenario in zip(axes[:, 0], scenarios, strict=True):
        for label in LABELS:
            for n, r in enumerate(scenario.rounds[label]):
                shift = r.moved if scenario.name == "reload" else 0.0
                t = np.array([p[0] for p in r.run.timeline]) - shift
                lat = np.array([p[1] for p in r.run.timeline]) * 1000
                ok = np.array([p[2] == 200 for p in r.run.timeline], dtype=bool)
                name = "drift checks" if label == "checks" else "no drift checks"
                ax.scatter(
                    t[ok], lat[ok], s=4, alpha=0.5, color=colors[label],
                    label=name if n == 0 else None,
                )  # fmt: skip
                ax.scatter(t[~ok], lat[~ok], s=12, marker="x", color="black")
                if scenario.name == "reload":
                    ax.axvline(r.swapped - shift, color=colors[label], linestyle="--", lw=1)
                    ax.axvline(r.settled - shift, color=colors[label], linestyle=":", lw=1)
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_ylabel("latency (ms)")
        if scenario.name == "reload":
            ax.axvline(0.0, color="black", lw=1)
            ax.set_xlabel(
                "seconds from the alias move (dashed: each server's swap; dotted: its new "
                "drift reference ready)"
            )
            ax.set_title("hot reload, version 1 → 2")
        else:
            ax.set_xlabel("seconds from /readyz")
            ax.set_title("start-up")
        ax.legend(loc="upper right")
    fig.suptitle(f"bench/serving_startup.py: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
