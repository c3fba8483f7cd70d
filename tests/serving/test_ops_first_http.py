"""`OpsFirstHttp`: probes and scrapes pass serve.max_connections, within a bounded reserve.

Each case serves a tiny ASGI app through the protocol on a real loopback socket (no uvicorn
Server around it), with uvicorn's own server state, whose task set is padded to stand for
requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.server import ServerState

from modelcycle.serving.protocol import HEAD_LIMIT, HEAD_SECONDS, UVICORN_REFUSAL, OpsFirstHttp


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
    send: list[bytes],
    limit: int = 1024,
    seconds: float = 0.5,
    pause: float = 0.0,
    app: Any = _app,
    max_connections: int | None = 8,
) -> tuple[bytes, float]:
    """What the protocol answers to `send` (pieces, `pause` s apart), and when it closed
    (keep-alive: after 1 s idle)."""
    config = uvicorn.Config(
        app,
        limit_concurrency=max_connections,
        lifespan="off",
        log_level="critical",
        timeout_keep_alive=1,
    )
    config.load()  # wraps the app in uvicorn's middleware, as a server does

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


class _Refusing:
    """An ASGI app answering "ok" (after `delay` s) that refuses `POST /refuse` from its head
    (`state.early_refusal`), as the server's app refuses an overloaded model's requests."""

    def __init__(self, delay: float = 0.0) -> None:
        self.state = SimpleNamespace(early_refusal=self.early)
        self.delay = delay
        self.called: list[str] = []  # the paths the app itself answered

    def early(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if (method, target) != (b"POST", b"/refuse"):
            return None
        return 429, [(b"content-length", b"2"), (b"retry-after", b"1")], b"no"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called.append(scope["path"])
        await asyncio.sleep(self.delay)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class _Lines(logging.Handler):
    """The messages logged to it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def _exchange(app: _Refusing, pieces: list[bytes], pause: float = 0.0) -> tuple[bytes, float]:
    """What the protocol answers `app`'s requests `pieces` with, and when it closed."""
    return await _answer(pieces, HEAD_LIMIT, HEAD_SECONDS, pause, app, max_connections=None)


REFUSE = b"POST /refuse HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n"


def test_a_refusal_the_app_gives_from_the_head_is_written_without_an_asgi_task() -> None:
    app = _Refusing()
    said, _ = asyncio.run(_exchange(app, [REFUSE + b"\r\n0123456789" + GET + b"\r\n"]))
    refusal, _, rest = said.partition(b"no")
    assert refusal.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"), said
    assert b"retry-after: 1\r\n" in refusal and b"connection: close" not in refusal
    assert rest.startswith(b"HTTP/1.1 200") and b"ok" in rest  # the same connection
    assert app.called == ["/v1/models"]  # the app never saw the refused request


def test_a_refused_request_s_body_may_follow_its_answer() -> None:
    # answered from the head: the body, sent after, is dropped, and the next request answered
    app = _Refusing()
    pieces = [REFUSE + b"\r\n", b"0123456789" + GET + b"\r\n"]
    said, _ = asyncio.run(_exchange(app, pieces, pause=0.2))
    assert said.count(b"HTTP/1.1 429") == 1 and said.count(b"HTTP/1.1 200") == 1, said
    assert app.called == ["/v1/models"]


@pytest.mark.parametrize(
    "head",
    [REFUSE + b"Connection: close\r\n", REFUSE.replace(b"HTTP/1.1", b"HTTP/1.0")],
)
def test_a_refusal_closes_a_connection_its_client_will_not_keep(head: bytes) -> None:
    said, closed = asyncio.run(_exchange(_Refusing(), [head + b"\r\n0123456789"]))
    assert said.startswith(b"HTTP/1.1 429") and b"connection: close\r\n" in said, said
    assert said.endswith(b"no") and closed < 0.8  # at once, not after the keep-alive second


def test_requests_behind_a_pipeline_or_expecting_100_continue_go_to_the_app() -> None:
    # written early, a refusal would overtake the answer still in progress before it
    app = _Refusing(delay=0.2)
    slow = b"POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
    said, _ = asyncio.run(_exchange(app, [slow + REFUSE + b"\r\n0123456789"]))
    assert said.count(b"HTTP/1.1 200") == 2 and app.called == ["/slow", "/refuse"], said
    app = _Refusing()
    expecting = REFUSE + b"Expect: 100-continue\r\n\r\n"
    said, _ = asyncio.run(_exchange(app, [expecting, b"0123456789"], pause=0.2))
    assert b"HTTP/1.1 200" in said and app.called == ["/refuse"], said


def test_beyond_the_limit_uvicorn_s_503_closes_even_what_the_app_would_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # answered 429 on a kept connection, refusals would hold the count over the limit, and
    # every request the model could take would get the 503 instead
    asgi_refusals: list[str] = []
    uvicorns = httptools_impl.service_unavailable

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        asgi_refusals.append(scope["path"])
        await uvicorns(scope, receive, send)

    monkeypatch.setattr(httptools_impl, "service_unavailable", counted)

    async def run() -> bytes:
        config = uvicorn.Config(
            _Refusing(), limit_concurrency=1, lifespan="off", log_level="critical"
        )
        config.load()
        uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's logging stops at "uvicorn"
        uvicorn_log.setLevel(logging.WARNING)  # its warnings pass, as under `modelcycle serve`
        uvicorn_log.addHandler(logged)
        state = ServerState()
        state.tasks.add(asyncio.ensure_future(asyncio.sleep(60)))  # one request in flight

        def protocol() -> OpsFirstHttp:
            return OpsFirstHttp(config=config, server_state=state, app_state={})

        server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REFUSE + b"\r\n0123456789")
            said = await asyncio.wait_for(reader.read(), timeout=5)  # until it closes
            writer.close()
            return said
        finally:
            server.close()

    logged = _Lines()
    try:
        said = asyncio.run(run())
    finally:
        logging.getLogger("uvicorn.error").removeHandler(logged)
    head, _, body = said.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), said
    assert b"connection: close" in head and b"content-length: 19" in head
    assert body == b"Service Unavailable"
    # written by the protocol, not by an ASGI task of uvicorn's refusal app (about as much
    # CPU as a request), and logged as uvicorn logs its own, which RefusalLog counts
    assert asgi_refusals == []
    assert logged.lines == [UVICORN_REFUSAL]


@pytest.mark.parametrize("early", [True, False])
def test_a_body_that_arrives_after_its_answer_leaves_an_idle_connection_to_keep_alive(
    early: bool,
) -> None:
    # uvicorn's keep-alive clock, started by the answer, was stopped by the body's bytes and
    # never started again: the idle connection stayed open until its client left
    head = REFUSE if early else REFUSE.replace(b"/refuse", b"/app")
    app = _Refusing()
    said, closed = asyncio.run(_exchange(app, [head + b"\r\n", b"0123456789"], pause=0.3))
    assert said.count(b"HTTP/1.1") == 1 and app.called == ([] if early else ["/app"]), said
    assert 1.0 < closed < 3  # the body at 0.3 s, then one second of keep-alive


def test_the_protocol_module_imports_nothing_heavy() -> None:
    # Spawned workers import it before they answer their supervisor's pings (5 s).
    heavy = ("torch", "mlflow", "onnxruntime", "fastapi", "modelcycle.config")
    probe = (
        "import sys, modelcycle.serving.protocol; "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
