"""`OpsFirstHttp`: probes and scrapes pass serve.max_connections, within a bounded reserve.

Each case serves a tiny ASGI app through the protocol on a real loopback socket (no uvicorn
Server around it), with uvicorn's own server state, whose task set is padded to stand for
requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from modelcycle.serving.protocol import OpsFirstHttp


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _status(
    request_line: str, limit: int | None, in_flight: int, reserve: int = OpsFirstHttp.reserve
) -> int:
    """The status the protocol answers `request_line` with, `in_flight` requests busy."""
    config = uvicorn.Config(_app, limit_concurrency=limit, lifespan="off", log_level="critical")
    config.load()
    state = ServerState()
    stand_ins = [asyncio.ensure_future(asyncio.sleep(60)) for _ in range(in_flight)]
    state.tasks.update(stand_ins)  # requests in flight, as uvicorn counts them

    def protocol() -> OpsFirstHttp:
        made = OpsFirstHttp(config=config, server_state=state, app_state={})
        made.reserve = reserve
        return made

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"{request_line}\r\nHost: test\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=5)
        writer.close()
        return int(status_line.split()[1])
    finally:
        server.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/metrics?name[]=x"])
def test_probes_and_scrapes_pass_the_limit(path: str) -> None:
    # limit 1: the asking connection alone reaches it, so uvicorn would answer 503
    assert asyncio.run(_status(f"GET {path} HTTP/1.1", limit=1, in_flight=0)) == 200


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /v1/models HTTP/1.1",
        "POST /v1/models/twins/predict HTTP/1.1",
        "POST /metrics HTTP/1.1",
        "GET /healthz/ HTTP/1.1",
        "GET /metricsx HTTP/1.1",
    ],
)
def test_everything_else_is_refused_as_uvicorn_refuses_it(request_line: str) -> None:
    assert asyncio.run(_status(request_line, limit=1, in_flight=0)) == 503


def test_the_reserve_bounds_how_many_probes_pass() -> None:
    # a limit of 1 and a reserve of 2: probes run while fewer than 3 requests are in flight
    assert asyncio.run(_status("GET /metrics HTTP/1.1", limit=1, in_flight=2, reserve=2)) == 200
    assert asyncio.run(_status("GET /metrics HTTP/1.1", limit=1, in_flight=3, reserve=2)) == 503


def test_no_limit_answers_everything() -> None:
    assert asyncio.run(_status("GET /v1/models HTTP/1.1", limit=None, in_flight=10_000)) == 200


async def _answer(
    send: list[bytes], limit: int = 1024, seconds: float = 0.5, pause: float = 0.0
) -> tuple[bytes, float]:
    """What the protocol answers to `send` (pieces, `pause` s apart), and when it closed."""
    config = uvicorn.Config(
        _app, limit_concurrency=8, lifespan="off", log_level="critical", timeout_keep_alive=1
    )
    config.load()

    def protocol() -> OpsFirstHttp:
        made = OpsFirstHttp(config=config, server_state=ServerState(), app_state={})
        made.head_limit, made.head_seconds = limit, seconds
        return made

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        for piece in send:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        said = await asyncio.wait_for(reader.read(), timeout=10)  # until the server closes
        closed = loop.time() - started
        writer.close()
        return said, closed
    finally:
        server.close()


GET = b"GET /v1/models HTTP/1.1\r\nHost: test\r\n"


def test_a_head_that_never_ends_gets_408_and_its_connection_back() -> None:
    # uvicorn kept such a connection for good, and each counted toward serve.max_connections
    # (a slowloris had every prediction answered 503)
    said, closed = asyncio.run(_answer([GET, b"X-A: 1\r\n"], seconds=0.5, pause=0.2))
    assert said.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), said
    assert b"did not arrive within 0.5 s" in said and b"connection: close" in said
    assert 0.4 < closed < 3


def test_a_head_sent_slowly_but_within_time_is_answered() -> None:
    pieces = [GET[:10], GET[10:], b"\r\n"]
    said, _ = asyncio.run(_answer(pieces, seconds=2.0, pause=0.2))
    assert said.startswith(b"HTTP/1.1 200"), said


def test_a_connection_that_never_asks_is_closed_without_an_answer() -> None:
    said, closed = asyncio.run(_answer([], seconds=0.5))
    assert said == b"" and 0.4 < closed < 3


def test_each_request_of_a_kept_alive_connection_gets_the_whole_time() -> None:
    # three requests, 0.3 s apart, on one connection: 0.9 s in all against 0.5 s each
    request = GET + b"\r\n"
    said, _ = asyncio.run(_answer([request, request, request], seconds=0.5, pause=0.3))
    assert said.count(b"HTTP/1.1 200") == 3, said


async def _trickle(body: bytes, then: bytes = b"", linger: float = 0.5) -> tuple[bytes, float]:
    """Post 100 declared bytes, `body` of them at once and then a byte every 0.1 s (at most 40)
    or `then` at once; what the server said, and when it closed (or 10 s, still open)."""
    config = uvicorn.Config(_app, lifespan="off", log_level="critical", timeout_keep_alive=1)
    config.load()

    def protocol() -> OpsFirstHttp:
        made = OpsFirstHttp(config=config, server_state=ServerState(), app_state={})
        made.linger_seconds = linger
        return made

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1]
        )
        started = loop.time()
        writer.write(
            b"POST /v1/models HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n" + body
        )
        said = await reader.readuntil(b"ok")  # answered before its body arrived
        if then:
            writer.write(then + GET + b"\r\n")  # the body's end, and a next request
            said += await reader.readuntil(b"ok")
        else:
            for _ in range(40):  # a byte at a time, faster than the keep-alive timeout
                if reader.at_eof() or writer.is_closing():
                    break
                try:
                    writer.write(b" ")
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.1)
        with contextlib.suppress(TimeoutError, ConnectionError):
            said += await asyncio.wait_for(reader.read(), timeout=10 - (loop.time() - started))
        closed = loop.time() - started
        writer.close()
        return said, closed
    finally:
        server.close()


def test_a_body_trickled_after_its_answer_does_not_hold_the_connection() -> None:
    # uvicorn read such a body to its end to keep the connection alive: a byte every few
    # seconds after a 401, 408 or 413 held a place of serve.max_connections for good
    said, closed = asyncio.run(_trickle(b'{"a": ', linger=0.5))
    assert said.startswith(b"HTTP/1.1 200") and said.count(b"HTTP/1.1") == 1, said
    assert 0.4 < closed < 2.5, closed


def test_a_body_that_arrives_while_lingering_keeps_the_connection() -> None:
    said, _ = asyncio.run(_trickle(b'{"a": ', then=b" " * 94, linger=2.0))
    assert said.count(b"HTTP/1.1 200") == 2, said


@pytest.mark.parametrize(
    "head",
    [
        GET + b"X-Big: " + b"x" * 2000 + b"\r\n\r\n",  # one header
        GET + b"".join(b"X-%d: 1234567890\r\n" % n for n in range(100)) + b"\r\n",  # many
        b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: test\r\n\r\n",  # the request line
    ],
)
def test_a_head_over_the_limit_gets_431(head: bytes) -> None:
    said, _ = asyncio.run(_answer([head], limit=1024))
    assert said.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), said
    assert b"exceed 1024 bytes" in said


def test_a_head_within_the_limit_is_answered() -> None:
    said, _ = asyncio.run(_answer([GET + b"X-Big: " + b"x" * 900 + b"\r\n\r\n"], limit=1024))
    assert said.startswith(b"HTTP/1.1 200"), said


def test_the_protocol_module_imports_nothing_heavy() -> None:
    # Spawned workers import it before they answer their supervisor's pings (5 s).
    heavy = ("torch", "mlflow", "onnxruntime", "fastapi", "modelcycle.config")
    probe = (
        "import sys, modelcycle.serving.protocol; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
