"""CPU per refused request, with and without answering refusals before routing, as a ratio.

Under overload most requests are refused (429), so what a refusal costs is CPU the model
does not get. The server answers them in `_Shed`, a pure ASGI layer in front of FastAPI's
routing; the baseline is the same app without that layer, where the predict route refuses
them itself (also before reading the body, but after routing, the API-key dependency and
header parsing).

Both apps serve twins@champion with a queue that refuses everything (serve.queue_limit=0)
and are called in this process through ASGI (no HTTP: uvicorn's share is the same for both),
interleaved in `--rounds` rounds so background load hits them alike. A second row times a
request both pass on to the routes (an unknown model), which shows what the layer adds to
requests it does not refuse.

    python bench/shedding.py [--workspace WS] [--data ../shared/data/qtim] [--calls 20000]

Without --workspace it builds a throwaway one (an untrained twins model, as bench/serving.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


async def cpu_per_call(app: Any, path: str, calls: int) -> tuple[float, int]:
    """Microseconds of this process's CPU per call of `app` with a small POST, and the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.process_time()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    used = time.process_time() - started
    assert len(statuses) == 1, statuses
    return used / calls * 1e6, statuses.pop()


async def measure(workspace: Path, calls: int, rounds: int) -> None:
    from fastapi import FastAPI

    from modelcycle.config import compose_config
    from modelcycle.serving.app import _Shed
    from modelcycle.serving.server import build_server

    overrides = [f"workspace={workspace}", "serve.capture=false", "serve.queue_limit=0"]
    shedding, _ = build_server(compose_config(overrides), ["twins@champion"])
    routed, _ = build_server(compose_config(overrides), ["twins@champion"])
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not _Shed]
    apps: dict[str, FastAPI] = {"shed": shedding, "routes": routed}
    paths = {"refused predict": "/v1/models/twins/predict", "unknown model": "/v1/models/x/predict"}
    results: dict[tuple[str, str], list[float]] = {}
    async with shedding.router.lifespan_context(shedding), routed.router.lifespan_context(routed):
        for what, path in paths.items():
            for app in apps.values():
                await cpu_per_call(app, path, calls // 10)  # warm up
            for n in range(rounds):
                for label, app in apps.items():
                    micros, status = await cpu_per_call(app, path, calls)
                    results.setdefault((what, label), []).append(micros)
                    print(f"round {n + 1}/{rounds} {what:<16} {label:<7} {status} {micros:6.1f} µs")
    print()
    print(f"{'request':<16} | {'with _Shed':>11} | {'without':>11} | ratio (range over rounds)")
    for what in paths:
        shed, routes = results[(what, "shed")], results[(what, "routes")]
        each = [a / b for a, b in zip(shed, routes, strict=True)]
        mean_shed, mean_routes = sum(shed) / len(shed), sum(routes) / len(routes)
        print(
            f"{what:<16} | {mean_shed:8.1f} µs | {mean_routes:8.1f} µs | "
            f"{mean_shed / mean_routes:.2f} ({min(each):.2f}-{max(each):.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, help="one with twins@champion exported")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "qtim")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per subject per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace
        if workspace is None:
            sys.path.insert(0, str(REPO / "bench"))
            from serving import build_workspace

            print("building a throwaway twins workspace", flush=True)
            workspace = build_workspace(args.data, Path(tmp))
        asyncio.run(measure(workspace, args.calls, args.rounds))


if __name__ == "__main__":
    main()
