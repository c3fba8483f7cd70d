"""The HTTP protocol the server runs: uvicorn's, with room for probes and scrapes.

A module of its own that imports only uvicorn: with `serve.workers=N` the protocol class
travels to each spawned worker inside uvicorn's config and is imported before the worker
answers its supervisor's pings, so a heavy import here would get workers killed as hung.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

#: Paths an operator needs most during an overload; they pass serve.max_connections.
OPS_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})
#: Longest a request line and its headers may be, in bytes; beyond it, 431.
HEAD_LIMIT = 64 * 1024
#: Seconds a request line and its headers may take to arrive, and a new connection may wait
#: for its first request; beyond it, 408 (or, with nothing sent, the connection closes).
HEAD_SECONDS = 10.0
#: Seconds the rest of a body may take to arrive once its request was answered without it
#: (401, 408, 413, 415); beyond them the connection closes.
LINGER_SECONDS = 5.0


#: A request scope's list of callables, each called once if the client leaves before the
#: request is answered (the app puts a queued prediction's cancel there).
CLIENT_GONE = "modelcycle.client_gone"

#: An answer the protocol writes itself: status, headers (as ASGI's) and body.
EarlyAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: What an app may offer the protocol as `app.state.early_refusal`: given a request's method,
#: target (path and query, as sent) and headers, the answer that refuses it now, or None to
#: hand the request to the app.
EarlyRefusal = Callable[[bytes, bytes, list[tuple[bytes, bytes]]], EarlyAnswer | None]

#: What uvicorn logs (as a warning on "uvicorn.error") for each request it refuses with 503
#: because `limit_concurrency` (serve.max_connections) is reached; the protocol logs the
#: same for the refusals it writes itself, so that both are counted alike (`RefusalLog`).
UVICORN_REFUSAL = "Exceeded concurrency limit."
#: uvicorn's answer over `limit_concurrency` (its `service_unavailable` app), less the
#: `connection: close` header, which an answer that closes its connection gets anyway.
OVER_LIMIT: EarlyAnswer = (
    503,
    [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"19")],
    b"Service Unavailable",
)


class _HeadTooLargeError(Exception):
    """Raised from a parser callback: stops the parser, and uvicorn then answers an error."""


class OpsFirstHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with room for probes and scrapes and a bounded head.

    Beyond `limit_concurrency` (serve.max_connections) open connections, uvicorn answers every
    request 503, so a Prometheus scrape or a readiness probe fails just while an overload
    lasts, when its numbers matter most. GET /healthz, /readyz and /metrics are answered as
    long as fewer than `reserve` requests beyond the limit are in flight, which keeps a flood
    of them bounded; every other request is refused exactly as uvicorn refuses it.

    uvicorn's own protocol keeps a connection that sends nothing, or sends its headers a
    byte at a time, open for good, and each counts toward that limit: a few hundred such
    connections (a slowloris) had every prediction answered 503. And it keeps whatever
    headers come, however many. Here a request's head must arrive within `head_seconds`
    (408; a connection that never sent a byte is closed) and stay under `head_limit` bytes
    (431).

    A request answered before its body arrived (a wrong key, a body too large or too slow)
    kept its connection for as long as the client went on sending that body, since uvicorn
    reads it to the end to keep the connection alive: a byte every few seconds held it for
    good. Here the rest of the body has `linger_seconds` to arrive, as nginx's lingering
    close; beyond them the connection closes.
    """

    reserve = 32
    head_limit = HEAD_LIMIT
    head_seconds = HEAD_SECONDS
    linger_seconds = LINGER_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._in_head = False
        self._too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's head; find the app's early refusal."""
        super().connection_made(transport)
        self._early = _early_refusal_of(self.app)
        self._time_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the head's and the unread body's clocks; tell an unanswered request.

        uvicorn only marks the request's cycle: an app learns of it when it next reads the
        body, which a queued prediction never does, so its batch computed it for nobody (a
        page's cancelled request, a client's timeout in an overload).
        """
        self._stop_head_clock()
        self._stop_lingering()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            for gone in cycle.scope.get(CLIENT_GONE, ()):  # type: ignore[attr-defined]
                gone()
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        """A request's body has all arrived: its connection may stay, idle, as keep-alive lets.

        A connection lingering for the body stays open. uvicorn starts the keep-alive clock
        when an answer is sent and stops it when bytes arrive; for a request answered before
        its body (a refusal, a 413), the body's bytes stopped it for good, and the connection
        stayed open, idle, until its client left.
        """
        self._stop_lingering()
        answered = self.cycle is not None and self.cycle.response_complete
        super().on_message_complete()
        if answered and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        """Give a body its request was answered without `linger_seconds` to arrive."""
        unread = self.cycle is not None and self.cycle.more_body
        super().on_response_complete()
        if unread and not self.transport.is_closing():
            self._stop_lingering()
            self._linger_timer = self.loop.call_later(self.linger_seconds, self._linger_ended)

    def _linger_ended(self) -> None:
        self._linger_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None

    def on_message_begin(self) -> None:
        """A request starts (the first, or the next on a kept-alive connection)."""
        super().on_message_begin()
        self.scope[CLIENT_GONE] = []  # type: ignore[literal-required]
        self._unset_keepalive_if_required()  # not idle (it may follow a body in one read)
        self._head_bytes, self._in_head = 0, True
        self._time_head()

    def on_url(self, url: bytes) -> None:
        """Count the request line toward `head_limit`."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count each header toward `head_limit`."""
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """The answer to a parser error (uvicorn's 400); 431 for a head too large."""
        if not self._too_large:
            super().send_400_response(msg)
            return
        self._close_with(
            431,
            b"Request Header Fields Too Large",
            f"The request line and headers exceed {self.head_limit} bytes.",
        )

    def _answer_early(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, close: bool = False
    ) -> None:
        """Write `status`, `headers` and `body` as uvicorn would, without an ASGI task.

        The request's body, unread, is dropped as it arrives (the stand-in cycle is complete)
        and has `linger_seconds` to arrive, as after any answer given before the body. With
        `close`, or when the client keeps no connection, the connection closes after it.
        """
        keep_alive = (
            not close
            and self.parser.get_http_version() == "1.1"
            and self.parser.should_keep_alive()
        )
        content = [STATUS_LINE[status]]
        for name, value in (*self.server_state.default_headers, *headers):
            content.extend([name, b": ", value, b"\r\n"])
        if not keep_alive:
            content.append(b"connection: close\r\n")
        content.extend([b"\r\n", body])
        self.transport.write(b"".join(content))
        self.cycle = _Answered(keep_alive)  # type: ignore[assignment]
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.head_limit:
            self._too_large = True
            raise _HeadTooLargeError

    def _time_head(self) -> None:
        self._stop_head_clock()
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._in_head:  # a new connection that never asked anything
            self.transport.close()
            return
        self._close_with(
            408,
            b"Request Timeout",
            f"The request line and headers did not arrive within {self.head_seconds:g} s.",
        )

    def _close_with(self, status: int, reason: bytes, message: str) -> None:
        body = message.encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, reason, len(body), body)
        )
        self.transport.close()

    def on_headers_complete(self) -> None:
        """Answer a request the app refuses from its head alone, or hand it to the app.

        Beyond the limit, uvicorn answers 503 and closes the connection, as without the app's
        refusals (answered 429 on a kept connection, they would keep the count up); an
        operator's GET passes the limit while there is room left.
        """
        self._stop_head_clock()
        self._in_head = False
        limit = self.limit_concurrency
        ops = (
            limit is not None
            and len(self.tasks) < limit + self.reserve
            and self.parser.get_method() == b"GET"
            and self.url.partition(b"?")[0] in OPS_PATHS
        )
        over = limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)
        now = (
            (self.cycle is None or self.cycle.response_complete)  # not behind a pipeline
            and not self.expect_100_continue
            and not self.parser.should_upgrade()
        )
        if over and not ops and now:
            # uvicorn's own 503 runs an ASGI task per refusal: about as much CPU as a
            # request, spent in an overload on requests nobody will serve
            self.logger.warning(UVICORN_REFUSAL)
            self._answer_early(*OVER_LIMIT, close=True)
            return
        if not over and self._early is not None and now:
            answer = self._early(self.parser.get_method(), self.url, self.headers)
            if answer is not None:
                self._answer_early(*answer)
                return
        if not ops:
            super().on_headers_complete()
            return
        self.limit_concurrency = None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit


class _NoEvent:
    """The message event of an answered cycle: nothing waits on it."""

    def set(self) -> None:
        """Nothing to wake."""


class _Answered:
    """The cycle of a request the protocol answered itself: complete, its body not read.

    It has what uvicorn's protocol reads of a cycle once its response is complete.
    """

    response_complete = True
    disconnected = False
    message_event = _NoEvent()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.more_body = True  # on_message_complete leaves a complete cycle as it is


def _early_refusal_of(app: Any) -> EarlyRefusal | None:
    """The `state.early_refusal` of the app, found through the middleware wrapping it."""
    for _ in range(8):  # uvicorn wraps the app in a few layers at most
        found = getattr(getattr(app, "state", None), "early_refusal", None)
        if found is not None:
            return found
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None
