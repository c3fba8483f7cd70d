"""CPU per refused request, answered at each of three depths, as ratios side by side.

Under overload most requests are refused (429, or 504 for a deadline no answer can meet), so
what a refusal costs is CPU the model does not get. A refusal the request's path and headers
settle is answered at the shallowest depth that can:

  protocol  `OpsFirstHttp` writes it when the head has arrived, before uvicorn makes the
            request's ASGI task (`_ShedRule.early`): no task, scope or middleware;
  shed      `_Shed`, a pure ASGI layer in front of FastAPI's routing, answers it (what the
            protocol leaves to the app: a query string, a browser's request);
  routes    the predict route refuses it itself (also before reading the body, but after
            routing, the API-key dependency and header parsing).

Two measurements, each in `--rounds` rounds with the subjects taking turns, so background
load hits them alike:

  1. over HTTP: `protocol` against `shed`, two real servers (uvicorn on 127.0.0.1, the second
     with the protocol's early answer switched off), each sent the same refused requests on
     four keep-alive connections; CPU of each server process per refusal (Linux /proc);
  2. in this process through ASGI (no HTTP: uvicorn's share is the same for both): `shed`
     against `routes`, plus a request both pass on to the routes (an unknown model), which
     shows what the layer adds to requests it does not refuse.

Every refused request carries `X-Deadline-Ms: 0.001`, shorter than one answer takes (504 at
once, after one answered request told the server how long answers take).

    python bench/shedding.py [--workspace WS] [--data ../shared/data/qtim] [--calls 20000]

Without --workspace it builds a throwaway one (an untrained twins model, as bench/serving.py).
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

PREDICT = "/v1/models/twins/predict"
REFUSED = [(b"x-deadline-ms", b"0.001")]  # shorter than any answer: refused at once
CONNECTIONS = 4
JSON = {"content-type": "application/json"}


# --- 1. over HTTP ---------------------------------------------------------------------------


def serve_without_early(workspace: Path, port: int) -> None:
    """`modelcycle serve twins@champion`, as its command builds it, with the protocol's
    early answer switched off: every refusal goes through the app (`_Shed`)."""
    import uvicorn

    from modelcycle.config import compose_config
    from modelcycle.serving.protocol import OpsFirstHttp
    from modelcycle.serving.server import build_server

    overrides = [f"workspace={workspace}", "serve.capture=false"]
    app, _ = build_server(compose_config(overrides), ["twins@champion"])
    del app.state.early_refusal
    uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, access_log=False, log_config=None, http=OpsFirstHttp
        )
    ).run()


async def refuse(url: str, body: bytes, calls: int) -> dict[int, int]:
    """Send `calls` refused predict requests over `CONNECTIONS` keep-alive connections."""
    from serving import Connection

    host, port = url.removeprefix("http://").rsplit(":", 1)
    connections = [Connection(host, int(port), PREDICT, [body]) for _ in range(CONNECTIONS)]
    extra = b"".join(name + b": " + value + b"\r\n" for name, value in REFUSED)
    for c in connections:
        c.requests = [c.head + extra + tail for tail in c.tails]
    statuses: dict[int, int] = {}

    async def loop(connection: Any) -> None:
        for i in range(calls // CONNECTIONS):
            status = await connection.post(i)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(loop(c) for c in connections))
    for c in connections:
        c.close()
    return statuses


def over_http(workspace: Path, calls: int, rounds: int, logs: Path) -> dict[str, list[float]]:
    """Server CPU µs per refusal of each subject, one figure per round."""
    import httpx

    from serving import free_port, process_cpu, serve_command, start, wait_ready

    results: dict[str, list[float]] = {"protocol": [], "shed": []}
    with contextlib.ExitStack() as stack:
        routes = (PREDICT, "/readyz")
        ports = {name: free_port() for name in results}
        commands = {
            "protocol": serve_command(
                "twins@champion", workspace, ports["protocol"], "serve.capture=false"
            ),
            "shed": [
                *(sys.executable, __file__, "--serve-without-early", str(workspace)),
                *("--port", str(ports["shed"])),
            ],
        }
        servers = {
            name: start(stack, name, command, ports[name], routes, logs)
            for name, command in commands.items()
        }
        wait_ready(list(servers.values()))
        examples = httpx.get(servers["protocol"].url + "/v1/models/twins/examples", timeout=10)
        body = json.dumps(examples.json()["examples"][0]["request"]).encode()
        for server in servers.values():  # one answer: the server learns how long one takes
            answered = httpx.post(server.url + PREDICT, content=body, headers=JSON, timeout=10)
            assert answered.status_code == 200, answered.text
            asyncio.run(refuse(server.url, body, calls // 10))  # warm up
        for n in range(rounds):
            for name, server in servers.items():
                before = process_cpu(server.process.pid).sum()
                statuses = asyncio.run(refuse(server.url, body, calls))
                used = process_cpu(server.process.pid).sum() - before
                assert set(statuses) == {504}, statuses
                results[name].append(used / calls * 1e6)
                print(f"round {n + 1}/{rounds} over HTTP {name:<8} {results[name][-1]:6.1f} µs")
    return results


# --- 2. in this process, through ASGI -------------------------------------------------------


async def asgi_call(
    app: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes]:
    """One call of `app`: the status and body it answers."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }
    status, answer = 0, b""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, answer
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            answer += message.get("body", b"")

    await app(scope, receive, send)
    return status, answer


async def cpu_per_call(app: Any, path: str, body: bytes, calls: int) -> tuple[float, int]:
    """Microseconds of this process's CPU per refused-looking call of `app`, and the status."""
    statuses: set[int] = set()
    started = time.process_time()
    for _ in range(calls):
        status, _ = await asgi_call(app, "POST", path, body, REFUSED)
        statuses.add(status)
    used = time.process_time() - started
    assert len(statuses) == 1, statuses
    return used / calls * 1e6, statuses.pop()


async def in_process(
    workspace: Path, calls: int, rounds: int
) -> dict[tuple[str, str], list[float]]:
    """CPU µs per call of `_Shed` and of the routes alone, one figure per round."""
    from fastapi import FastAPI

    from modelcycle.config import compose_config
    from modelcycle.serving.app import _Shed
    from modelcycle.serving.server import build_server

    overrides = [f"workspace={workspace}", "serve.capture=false"]
    shedding, _ = build_server(compose_config(overrides), ["twins@champion"])
    routed, _ = build_server(compose_config(overrides), ["twins@champion"])
    routed.user_middleware = [m for m in routed.user_middleware if m.cls is not _Shed]
    apps: dict[str, FastAPI] = {"shed": shedding, "routes": routed}
    paths = {"refused predict": PREDICT, "unknown model": "/v1/models/x/predict"}
    results: dict[tuple[str, str], list[float]] = {}
    async with shedding.router.lifespan_context(shedding), routed.router.lifespan_context(routed):
        _, listed = await asgi_call(shedding, "GET", "/v1/models/twins/examples", b"", [])
        body = json.dumps(json.loads(listed)["examples"][0]["request"]).encode()
        for app in apps.values():  # one answer: the server learns how long one takes
            status, _ = await asgi_call(app, "POST", PREDICT, body, [])
            assert status == 200, status
        for what, path in paths.items():
            for app in apps.values():
                await cpu_per_call(app, path, body, calls // 10)  # warm up
            for n in range(rounds):
                for label, app in apps.items():
                    micros, status = await cpu_per_call(app, path, body, calls)
                    results.setdefault((what, label), []).append(micros)
                    print(f"round {n + 1}/{rounds} {what:<16} {label:<7} {status} {micros:6.1f} µs")
    return results


def ratio_line(what: str, ours: list[float], base: list[float]) -> str:
    """`what`: both means and their ratio, with the range of the per-round ratios."""
    each = [a / b for a, b in zip(ours, base, strict=True)]
    mean_ours, mean_base = sum(ours) / len(ours), sum(base) / len(base)
    return (
        f"{what:<36} | {mean_ours:8.1f} µs | {mean_base:8.1f} µs | "
        f"{mean_ours / mean_base:.2f} ({min(each):.2f}-{max(each):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workspace", type=Path, help="one with twins@champion exported")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "qtim")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per subject per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve-without-early", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_without_early is not None:  # the `shed` server of measurement 1
        serve_without_early(args.serve_without_early, args.port)
        return
    if min(args.calls, args.rounds) < 1:
        parser.error("--calls and --rounds must be positive")
    with tempfile.TemporaryDirectory() as tmp:
        workspace = args.workspace
        if workspace is None:
            from serving import build_workspace

            print("building a throwaway twins workspace", flush=True)
            workspace = build_workspace(args.data, Path(tmp))
        http = over_http(workspace.resolve(), args.calls, args.rounds, Path(tmp))
        asgi = asyncio.run(in_process(workspace, args.calls, args.rounds))
    print()
    print(f"{'refused request':<36} | {'ours':>11} | {'baseline':>11} | ratio (range over rounds)")
    print(ratio_line("over HTTP: protocol ÷ shed", http["protocol"], http["shed"]))
    for what in ("refused predict", "unknown model"):
        print(ratio_line(f"ASGI, {what}: shed ÷ routes", asgi[(what, "shed")],
                         asgi[(what, "routes")]))  # fmt: skip


if __name__ == "__main__":
    main()
