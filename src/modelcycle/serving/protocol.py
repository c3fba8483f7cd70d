"""The HTTP protocol the server runs: uvicorn's, with room for probes and scrapes.

A module of its own that imports only uvicorn: with `serve.workers=N` the protocol class
travels to each spawned worker inside uvicorn's config and is imported before the worker
answers its supervisor's pings, so a heavy import here would get workers killed as hung.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: Paths an operator needs most during an overload; they pass serve.max_connections.
OPS_PATHS = frozenset({b"/healthz", b"/readyz", b"/metrics"})


class OpsFirstHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, but a health check or a scrape passes the connection limit.

    Beyond `limit_concurrency` (serve.max_connections) open connections, uvicorn answers every
    request 503, so a Prometheus scrape or a readiness probe fails just while an overload
    lasts, when its numbers matter most. GET /healthz, /readyz and /metrics are answered as
    long as fewer than `reserve` requests beyond the limit are in flight, which keeps a flood
    of them bounded; every other request is refused exactly as uvicorn refuses it.
    """

    reserve = 32

    def on_headers_complete(self) -> None:
        """Lift the limit for this one request when it is an operator's GET with room left."""
        limit = self.limit_concurrency
        if (
            limit is None
            or len(self.tasks) >= limit + self.reserve
            or self.parser.get_method() != b"GET"
            or self.url.partition(b"?")[0] not in OPS_PATHS
        ):
            super().on_headers_complete()
            return
        self.limit_concurrency = None
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = limit
