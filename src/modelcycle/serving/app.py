"""The model server: FastAPI + ONNX Runtime, micro-batched, measured, captured.

Routes: POST /v1/models/{name}/predict, GET /v1/models, GET /v1/models/{name}/examples,
GET /v1/models/{name}/drift (with a drift service),
GET /healthz (alive), GET /readyz (every model loaded and warm), GET /metrics (Prometheus),
GET / (the web page) and the OpenAPI docs. Models load in the lifespan, never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hmac
import itertools
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from modelcycle.embedding_columns import answer_columns, monitor_columns
from modelcycle.kinds import is_number, is_whole
from modelcycle.monitoring.capture import LIVE, Capture, CaptureStore
from modelcycle.monitoring.drift_service import DriftService
from modelcycle.serving.adapter import RequestError, Rows, ServingAdapter, UnsupportedMediaError
from modelcycle.serving.batching import (
    Interleaved,
    MicroBatcher,
    OverloadedError,
    Slots,
    StoppingError,
)
from modelcycle.serving.json_keys import refuse_repeated_keys, unique_pairs
from modelcycle.serving.loading import ServedModel, warm_up
from modelcycle.serving.loop_lag import LoopLag, RecentTime
from modelcycle.serving.metrics import ServerMetrics, refusals_counted
from modelcycle.serving.protocol import CLIENT_GONE
from modelcycle.serving.uploads import MULTIPART, accepted_types, file_bytes, takes_bytes

log = logging.getLogger(__name__)
T = TypeVar("T")
REF_TEMPLATE = "#/components/schemas/{model}"


#: Share of the deadline a request may expect to spend queued; beyond it, 429 at once (the
#: rest is left for its own model call and for the estimate's error).
WAIT_SHARE = 0.5
PREDICT = "/v1/models/{name}/predict"
#: Where the page's HTML takes what the server tells it (`page_html`).
PAGE_SETTINGS = "{/* the server's settings */}"
SHED_ROUTE = "modelcycle.route"  # scope key: the route template of a request answered early
#: Seconds a request body may take to arrive at least, whatever is left of its deadline.
READ_FLOOR = 1.0
#: Seconds a stop signal's handler waits for the readiness gauge (`_stop_accepting`).
GAUGE_WAIT = 0.5
#: Most of pydantic's errors a 422 lists, in all and of one kind among siblings.
MAX_ERRORS = 20
SIBLING_ERRORS = 3
#: Fewest characters an API key may have: a short word is guessed by a few thousand requests.
MIN_KEY_LENGTH = 16
#: Where the Swagger UI files of /docs are served from.
DOCS_ASSETS = "/docs-assets"
#: What predict answers besides 200 and 422, as its OpenAPI document lists them.
PREDICT_REFUSALS = {
    400: "The body is not valid JSON, or nests deeper than the parser goes.",
    401: "A missing or wrong API key (when the server has one).",
    404: "No model of that name is served.",
    408: "The body did not arrive within what was left of the request's deadline.",
    413: "The body is larger than serve.body_limit.",
    415: "A Content-Type the model does not take, or a compressed body.",
    429: "Over capacity, or the answer could not come within the deadline (see Retry-After).",
    504: "The deadline passed, or is shorter than one answer takes on an idle server.",
}
#: Request headers a browser on an allowed origin may send (CORS), besides the simple ones.
CORS_HEADERS = ("Authorization", "X-API-Key", "X-Deadline-Ms", "X-Capture-Source", "Content-Type")


@dataclass(frozen=True)
class ServeSettings:
    """Limits and knobs of a server.

    Attributes:
        max_batch: Largest micro-batch.
        max_wait_ms: How long a lone request may wait for company (0: never).
        queue_limit: Requests that may wait per model; beyond it, 429 at once.
        body_limit: Largest request body in bytes; beyond it, 413.
        deadline_ms: Longest a request may take; beyond it, 504. A request that would expect
            to wait over half of it in the queue (at the rate batches are measured to run)
            gets 429 at once instead.
        api_key: When set, /v1 routes need `Authorization: Bearer <key>` or `X-API-Key`;
            at least `MIN_KEY_LENGTH` characters.
        cors_origins: Origins allowed by CORS; none by default (closed).
        threads: Model calls that may run at once, over all served models (each model has
            its own batching thread).
        reload_seconds: How often to check whether a served alias moved (0: never).
    """

    max_batch: int = 32
    max_wait_ms: float = 0.0
    queue_limit: int = 256
    body_limit: int = 1_000_000
    deadline_ms: float = 5000.0
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    threads: int = 2
    reload_seconds: float = 0.0

    def __post_init__(self) -> None:
        whole = {
            "max_batch": " (1: no batching)",
            "queue_limit": "",
            "body_limit": " (bytes)",
            "threads": " (null in the config: one per core)",
        }
        for key, hint in whole.items():
            value = getattr(self, key)
            if not is_whole(value) or value < 1:
                raise ValueError(f"serve.{key}={value!r}: give a whole number >= 1{hint}.")
        spans = {"max_wait_ms": "0: never wait", "reload_seconds": "0: no hot reload"}
        for key, hint in spans.items():
            value = getattr(self, key)
            if not is_number(value) or not 0 <= value < float("inf"):
                raise ValueError(f"serve.{key}={value!r}: give a finite number >= 0 ({hint}).")
        if not is_number(self.deadline_ms) or not 0 < self.deadline_ms < float("inf"):
            raise ValueError(
                f"serve.deadline_ms={self.deadline_ms!r}: give the milliseconds a request may "
                "take, > 0."
            )
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError(
                "serve.api_key is empty (MODELCYCLE_API_KEY set to nothing?): set a non-empty key, "
                "or unset it to serve without one."
            )
        if self.api_key is not None:  # a key read from a file ends in a newline clients lack
            object.__setattr__(self, "api_key", self.api_key.strip())
            if len(self.api_key) < MIN_KEY_LENGTH:  # never the key itself: logs keep messages
                raise ValueError(
                    f"serve.api_key has {len(self.api_key)} characters; give one of at least "
                    f'{MIN_KEY_LENGTH}, e.g. a random one from `python -c "import secrets; '
                    f'print(secrets.token_urlsafe(32))"`.'
                )


#: Given the served model, its alias's newer version loaded (not yet warmed), or None.
Reloader = Callable[[ServedModel], "ServedModel | None"]


@dataclass
class _Payload:
    served: ServedModel  # the version that decoded the request also answers it
    rows: list[np.ndarray]
    features: dict[str, float]
    queued_at: float = field(default_factory=time.perf_counter)
    source: str = LIVE  # X-Capture-Source: whose traffic, for the capture row


@dataclass
class _State:
    models: dict[str, ServedModel] = field(default_factory=dict)
    batchers: dict[str, MicroBatcher] = field(default_factory=dict)
    ready: bool = False
    # How late the event loop runs (a request's wait before the app sees it), and how long
    # each model's answers took lately: together they tell a deadline that cannot be met.
    lag: LoopLag = field(default_factory=LoopLag)
    answer_times: defaultdict[str, RecentTime] = field(
        default_factory=lambda: defaultdict(RecentTime)
    )
    # Predict requests of each model past the refusal check and not yet answered: with none,
    # the recent answer times (maybe one large image's) say nothing of the next request's.
    in_progress: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    # One thread decodes heavy bodies (images), in arrival order: asyncio's default pool
    # would run up to 32 decodes at once beside the model's intra-op threads. Measured on 2
    # cores (int8 resnet18 at 224 px, 8 clients): 126 req/s with one thread, 124 with the
    # pool, 133 decoding on the event loop (which then stops answering while it decodes).
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
    )
    # And one encodes answers (a segmentation mask's PNG): in the decode thread, four 25 Mpx
    # masks held a 224 px tile's decoding, and with it the model, for 1.4 s.
    encoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
    )


def create_app(
    load_models: Callable[[], list[ServedModel]],
    settings: ServeSettings,
    capture: CaptureStore | None = None,
    reload: Reloader | None = None,
    drift: DriftService | None = None,
    close_capture: bool = False,
) -> FastAPI:
    """Build the app; `load_models` runs in the lifespan, off the event loop.

    With `close_capture` the app owns `capture` and closes it when it stops, which empties
    the store's WAL into the database (an unclosed one stayed at tens of MB).

    With `reload` and `settings.reload_seconds`, a background task asks `reload(current)`
    for each model; a new model it returns (loaded off the event loop, then warmed between
    the live batches) replaces the current one in one assignment. Requests already decoded
    finish on the version that decoded them, and a batch never mixes versions. With `drift`,
    a background thread checks the served models' drift and GET /v1/models/{name}/drift
    answers from its cache.
    """
    state, metrics = _State(), ServerMetrics.create()
    # Loads, warm-ups and reloads run one after another, off the event loop.
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
    slots = Slots(settings.threads)  # model calls at once, over all models
    stopping = threading.Event()  # set on shutdown: work between batches gives up

    def between(served: ServedModel) -> Interleaved:
        """Model calls of work beside serving (warm-ups, drift references) between batches."""
        no_queue = functools.partial(_no_queue, state)
        return Interleaved(served.run, slots, no_queue, stopping=stopping)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with refusals_counted(metrics.refused):  # uvicorn's 503s over serve.max_connections
            loop = asyncio.get_running_loop()
            loaded = await loop.run_in_executor(executor, load_models)
            for served in loaded:
                await loop.run_in_executor(executor, warm_up, served)
                if drift is not None:
                    await loop.run_in_executor(executor, drift.prepare, served)
                _add_model(state, metrics, served, settings, slots, capture)
            # Everything loaded so far (torch, mlflow, the models) lives as long as the process:
            # move it out of the collector's view, or each full collection pauses ~300 ms.
            gc.collect()
            gc.freeze()
            state.ready = True
            metrics.ready.set(1)
            log.info("Ready: %s", ", ".join(f"{m.name} v{m.version}" for m in loaded))
            watcher = None
            if reload is not None and settings.reload_seconds > 0:
                watcher = asyncio.create_task(
                    _watch(state, metrics, reload, executor, settings, drift, between)
                )
            if drift is not None:
                drift.start(lambda: state.models, metrics.registry, between)
            lag = asyncio.create_task(state.lag.run(metrics.loop_lag.set))
            yield
            lag.cancel()
            stopping.set()
            if drift is not None:
                drift.stop()
            _not_ready(state, metrics)  # already false when a stop signal arrived
            if watcher is not None:
                watcher.cancel()
            for batcher in state.batchers.values():
                await batcher.stop()
            executor.shutdown(wait=True)
            state.decoder.shutdown(wait=True)
            state.encoder.shutdown(wait=True)
            if capture is not None and close_capture:
                capture.close()

    # No redirect to the path without its trailing slash: Starlette builds it from the Host
    # header, so a request could make the server send a client anywhere. /docs loads
    # Swagger UI from this server (FastAPI's page loads it from a CDN, and was blank offline
    # or behind a firewall); no /redoc, whose page still fetches a logo from its CDN.
    app = FastAPIOffline(
        redoc_url=None,
        title="modelcycle",
        version="1",
        lifespan=lifespan,
        redirect_slashes=False,
        static_url=DOCS_ASSETS,
    )
    _answer_source_maps(app)
    app.state.stop_accepting = functools.partial(_stop_accepting, state, metrics)
    app.add_exception_handler(StarletteHTTPException, _allowing_head)
    _add_middleware(app, state, metrics, settings)
    _add_routes(app, state, metrics, settings, drift)
    return app


class _DocsAssets(StaticFiles):
    """Swagger UI's files, and an empty source map for each.

    swagger-ui.css names its map (swagger-ui.css.map), which FastAPIOffline does not ship,
    and browser devtools ask for it while /docs is open. A map with no sources is what they
    read as "nothing to map"; an empty 204 would fail their JSON parse instead of the 404.
    """

    async def get_response(self, path: str, scope: Scope) -> Response:
        """The file at `path`; for `ASSET.map`, an empty map when ASSET is one of the files."""
        try:
            return await super().get_response(path, scope)
        except StarletteHTTPException as missing:
            if missing.status_code != 404 or not path.endswith(".map"):
                raise
            asset = path.removesuffix(".map")
            await super().get_response(asset, scope)  # not one of the files: its 404
        name = asset.rsplit("/", 1)[-1]
        return JSONResponse(
            {"version": 3, "file": name, "sources": [], "names": [], "mappings": ""}
        )


def _answer_source_maps(app: FastAPI) -> None:
    """Serve the docs' files with `_DocsAssets` in place of FastAPIOffline's StaticFiles."""
    for i, route in enumerate(app.router.routes):
        if (
            isinstance(route, Mount)
            and route.path == DOCS_ASSETS
            and isinstance(route.app, StaticFiles)
        ):
            assets = _DocsAssets(directory=route.app.directory)
            app.router.routes[i] = Mount(DOCS_ASSETS, assets, name=route.name)


def _not_ready(state: _State, metrics: ServerMetrics) -> None:
    state.ready = False
    metrics.ready.set(0)


def _stop_accepting(state: _State, metrics: ServerMetrics) -> None:
    """Turn readiness false at once: what a stop signal's handler calls.

    prometheus_client guards each value with a lock that is not re-entrant (in multi-process
    mode, one lock for all of them). A handler runs on the main thread between two bytecodes,
    so one that came while the event loop was recording a request waited for itself
    forever: a worker never stopped after SIGTERM. The flag is set here; the gauge from a
    thread of its own, awaited for `GAUGE_WAIT` seconds at most: should the main thread hold
    the lock, the thread sets the gauge once the handler has returned and it is let go.
    """
    state.ready = False
    setting = threading.Thread(target=metrics.ready.set, args=(0,), name="not-ready", daemon=True)
    setting.start()
    setting.join(GAUGE_WAIT)


def _add_model(
    state: _State,
    metrics: ServerMetrics,
    served: ServedModel,
    settings: ServeSettings,
    slots: Slots,
    capture: CaptureStore | None,
) -> None:
    if served.name in state.models:
        raise ValueError(f"{served.name} is served twice; serve one alias per model name.")

    def process(payloads: list[_Payload]) -> list[dict[str, np.ndarray]]:
        return _run_by_version(payloads, capture)

    state.models[served.name] = served
    state.batchers[served.name] = batcher = MicroBatcher(
        process,
        settings.max_batch,
        settings.max_wait_ms / 1000,
        settings.queue_limit,
        wait_budget=_wait_budget(settings.deadline_ms),
        slots=slots,
        name=f"batch-{served.name}",
    )
    batcher.on_batch = metrics.batch_observer(served.name, batcher.depth)
    batcher.start()
    metrics.model_info.labels(served.name, served.alias, served.version, served.variant).set(1)


async def _watch(
    state: _State,
    metrics: ServerMetrics,
    reload: Reloader,
    executor: ThreadPoolExecutor,
    settings: ServeSettings,
    drift: DriftService | None,
    between: Callable[[ServedModel], Interleaved],
) -> None:
    """Swap in a model whose alias moved; a failed reload keeps the current version.

    The new version is warmed before the swap and its drift reference computed after it,
    both in small pieces between the live batches (`between`), not beside them. Nothing
    needs the reference before the next drift check, and the new version's captures have
    only begun; computing it first would hold the swap back for seconds.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(settings.reload_seconds)
        for name, current in list(state.models.items()):
            try:
                fresh = await loop.run_in_executor(executor, reload, current)
                if fresh is None:
                    continue
                warm = functools.partial(warm_up, fresh, run=between(fresh))
                await loop.run_in_executor(executor, warm)
            except StoppingError:
                return
            except Exception as err:  # keep serving what works; try again next time
                log.warning("Reloading %s@%s failed: %s", name, current.alias, err)
                metrics.reloads.labels(name, "failed").inc()
                continue
            state.models[name] = fresh  # one assignment: the next request sees the new one
            metrics.reloads.labels(name, "swapped").inc()
            info = metrics.model_info
            info.labels(name, current.alias, current.version, current.variant).set(0)
            info.labels(name, fresh.alias, fresh.version, fresh.variant).set(1)
            log.info("%s@%s: version %s → %s", name, fresh.alias, current.version, fresh.version)
            if drift is not None:
                await loop.run_in_executor(executor, drift.prepare, fresh)


def _no_queue(state: _State) -> bool:
    """Whether no request waits for any model now."""
    return not any(batcher.depth() for batcher in state.batchers.values())


def _run_by_version(
    payloads: list[_Payload], capture: CaptureStore | None
) -> list[dict[str, np.ndarray]]:
    """Split a batch by the model version that decoded each request; run each part."""
    results: list[dict[str, np.ndarray]] = [{} for _ in payloads]
    for served in {id(p.served): p.served for p in payloads}.values():
        indices = [i for i, p in enumerate(payloads) if p.served is served]
        part = _run_batch(served, [payloads[i] for i in indices], capture)
        for i, result in zip(indices, part, strict=True):
            results[i] = result
    return results


def _run_batch(
    served: ServedModel, payloads: list[_Payload], capture: CaptureStore | None
) -> list[dict[str, np.ndarray]]:
    """One model call for the batch; its captures commit before any request is answered.

    A request whose answered outputs are not all finite (inputs far beyond what the model
    was trained on overflow it) gets an empty result, answered 422, and is not captured: it
    is no prediction. Finiteness is checked once per batch and output, not per request.
    """
    sizes = [len(p.rows[0]) for p in payloads]
    inputs = [joined(column) for column in zip(*(p.rows for p in payloads), strict=True)]
    outputs = served.run(inputs)
    bounds = list(itertools.pairwise(np.cumsum([0, *sizes])))
    named = dict(zip(served.output_names, outputs, strict=True))
    finite_rows = np.ones(len(outputs[0]), dtype=bool)
    for name in served.answer_outputs:
        out = named[name]
        finite_rows &= np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    results = [
        {n: out[lo:hi] for n, out in named.items()} if finite_rows[lo:hi].all() else {}
        for lo, hi in bounds
    ]
    if capture is not None:
        now, done = time.time(), time.perf_counter()
        capture.write(
            [
                Capture(
                    served.name,
                    served.version,
                    p.features | monitor_columns(r, served.monitor_outputs),
                    answer_columns(r, served.answer_outputs),
                    (done - p.queued_at) * 1000,
                    now,
                    served.variant,
                    p.source,
                )
                for p, r in zip(payloads, results, strict=True)
                if r
            ]
        )
    return results


# Elements: numpy 2.4 kept the GIL copying arrays of up to 16,384 elements here, and let go
# for larger ones; below this size `np.concatenate` needs no take-back.
_NUMPY_LETS_GO_FROM = 8192


def joined(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """`np.concatenate(arrays)` along the batch axis, copied without releasing the GIL.

    numpy lets go of the GIL for each large copy and must take it back after. In the batching
    thread every such take waits for whichever thread got the GIL meanwhile (the event loop
    writing a response, the decode thread), and when the two cores are busy with the model,
    that thread may not even be running. A batch of four 224 px images took 2.0-2.5 ms to
    join with `np.concatenate` in a loaded server, against 0.015 ms alone, and 0.08 ms this
    way (int8 resnet18, 8 clients, 2 cores): 5 % of the server's throughput. Small arrays
    (twins' measures, whose copies numpy makes without letting go) go to `np.concatenate`,
    which is faster there (2.6 against 19 µs for 16 rows of 150 floats); so are arrays of
    other trailing shapes or dtypes, for numpy's error or type promotion.
    """
    first = arrays[0]
    if len(arrays) == 1:
        return first
    if (
        max(a.size for a in arrays) < _NUMPY_LETS_GO_FROM
        or first.dtype.hasobject
        or any(a.dtype != first.dtype or a.shape[1:] != first.shape[1:] for a in arrays)
    ):
        return np.concatenate(arrays)
    out = np.empty((sum(len(a) for a in arrays), *first.shape[1:]), first.dtype)
    flat = out.reshape(-1).view(np.uint8).data  # a memoryview: its copies keep the GIL
    at = 0
    for array in arrays:
        part = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
        flat[at : at + part.nbytes] = part
        at += part.nbytes
    return out


async def _allowing_head(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an HTTP error, whose 405 also allows HEAD where GET is allowed."""
    assert isinstance(exc, StarletteHTTPException)
    allowed = (exc.headers or {}).get("Allow")
    if exc.status_code == 405 and allowed is not None:
        methods = {m.strip() for m in allowed.split(",")}
        if "GET" in methods:
            methods.add("HEAD")
        exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
    return await http_exception_handler(request, exc)


def _add_middleware(
    app: FastAPI, state: _State, metrics: ServerMetrics, settings: ServeSettings
) -> None:
    # Innermost of the three: CORS headers and measuring apply to its refusals too.
    rule = _ShedRule(state, settings, metrics)
    app.add_middleware(_Shed, rule=rule)
    app.state.early_refusal = rule.early  # for OpsFirstHttp, before any ASGI task
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_HEADERS),  # a browser may send the key and a deadline
        )
    app.add_middleware(_Measure, state=state, metrics=metrics, routes=app.router.routes)


class _ShedRule:
    """Which predict requests their model refuses now, from the path and headers alone.

    Whatever those do not settle (an unknown model, a missing or wrong key, a malformed
    X-Deadline-Ms, a server not ready) is left to the routes, which answer it as without an
    overload; a request let through is judged again there, still before its body is read.
    """

    prefix, suffix = PREDICT.split("{name}")

    def __init__(self, state: _State, settings: ServeSettings, metrics: ServerMetrics) -> None:
        self.state, self.settings, self.metrics = state, settings, metrics
        self.key = None if settings.api_key is None else settings.api_key.encode()

    def model(self, path: str) -> str | None:
        """The served model a predict `path` names, once the server is ready; else None."""
        if not (self.state.ready and path.startswith(self.prefix) and path.endswith(self.suffix)):
            return None
        name = path[len(self.prefix) : -len(self.suffix)]
        return name if name in self.state.batchers else None

    def refusal(self, name: str, headers: list[tuple[bytes, bytes]]) -> JSONResponse | None:
        """The answer refusing a request for `name` with these headers now, or None."""
        first: dict[bytes, bytes] = {}  # the first of each, as the routes read them
        for key, value in headers:
            if key in (b"x-deadline-ms", b"x-api-key", b"authorization"):
                first.setdefault(key, value)
        if self.key is not None:
            given = first.get(b"x-api-key") or first.get(b"authorization", b"")
            if not _key_matches(given.decode("latin-1"), self.key):
                return None
        deadline = first.get(b"x-deadline-ms")
        try:
            wanted = None if deadline is None else float(deadline)
        except ValueError:
            return None
        if wanted is not None and not 0 < wanted < float("inf"):
            return None
        return _refusal(self.state, name, _deadline_ms(self.settings, wanted))

    def early(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        """A refusal for the HTTP protocol to write itself, or None to hand the request on.

        `OpsFirstHttp` asks before it makes the request's ASGI task: a refusal answered there
        spends no task, scope or middleware, about half the server CPU of one through `_Shed`
        (`bench/shedding.py`). It is counted as `_Measure` counts answers. A target with a
        query or %-escapes, and a browser's request (CORS answers it), go to the app.
        """
        started = time.perf_counter()
        if method != b"POST" or b"?" in target or b"%" in target:
            return None
        if self.settings.cors_origins and any(k == b"origin" for k, _ in headers):
            return None
        name = self.model(target.decode("latin-1"))
        refused = None if name is None else self.refusal(name, headers)
        if name is None or refused is None:
            return None
        status = refused.status_code
        self.metrics.requests.labels(PREDICT, str(status), name).inc()
        self.metrics.latency.labels(PREDICT, name).observe(time.perf_counter() - started)
        return status, refused.raw_headers, bytes(refused.body)


class _Shed:
    """Answers 429 (504), before FastAPI routes it, to a predict request its model would refuse.

    Pure ASGI, and the body is never read. Under overload most requests are refused, and
    routing them costs about 0.1 ms of CPU each (dependencies, header parsing), taken from
    the model; this costs a fifth of that (README, Benchmarks). The HTTP protocol answers
    most refusals before they get here (`_ShedRule.early`); this answers the others.
    """

    def __init__(self, app: Callable[..., Any], rule: _ShedRule) -> None:
        self.app, self.rule = app, rule

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            name = self.rule.model(scope.get("path", ""))
            shed = None if name is None else self.rule.refusal(name, scope["headers"])
            if shed is not None:
                scope[SHED_ROUTE], scope["path_params"] = PREDICT, {"name": name}
                await shed(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Measure:
    """Counts and times every request by route template, status and model (pure ASGI).

    Not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs each request through
    an extra task and memory streams, which measured 0.25 ms of CPU per request here.
    """

    def __init__(
        self,
        app: Callable[..., Any],
        state: _State,
        metrics: ServerMetrics,
        routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.app, self.state, self.metrics, self.routes = app, state, metrics, routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            # Every GET answers HEAD too (RFC 9110 9.3.2): the routes see a GET; the server
            # keeps its own scope, still HEAD, and sends the headers without the body.
            scope = {**scope, "method": "GET"}
        started, status, root = time.perf_counter(), 500, scope.get("root_path", "")

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:  # the route and its parameters are in the scope once routing matched
            route = scope.get(SHED_ROUTE) or self._template(scope, root)
            name = scope.get("path_params", {}).get("name", "")
            model = name if name in self.state.models else "-"
            self.metrics.requests.labels(route, str(status), model).inc()
            self.metrics.latency.labels(route, model).observe(time.perf_counter() - started)

    def _template(self, scope: dict[str, Any], root: str) -> str:
        """The path template that answered (or "unmatched").

        Starlette's own routes (the OpenAPI document, the docs page, the docs' files) leave
        none in the scope, and are matched again here.
        """
        found = scope.get("route")
        if found is not None:
            return str(found.path)
        asked = {
            "type": "http",
            "path": scope["path"],
            "root_path": root,
            "method": scope["method"],
        }
        for candidate in self.routes:  # PARTIAL: the path matched, not the method (405)
            if candidate.matches(asked)[0] is not Match.NONE:
                return str(getattr(candidate, "path", "unmatched"))
        return "unmatched"


def _add_routes(
    app: FastAPI,
    state: _State,
    metrics: ServerMetrics,
    settings: ServeSettings,
    drift: DriftService | None,
) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Readiness: every model loaded and warmed."""
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus metrics."""
        return Response(generate_latest(metrics.exposed), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return page_html(settings)

    key_check = [Depends(_key_check(settings))]
    v1 = APIRouter(prefix="/v1", dependencies=key_check)

    @v1.get("/models")
    async def list_models() -> JSONResponse:
        """Served models: version, alias, lineage summary, request schema."""
        return JSONResponse({"models": [m.describe() for m in state.models.values()]})

    @v1.get("/models/{name}/examples")
    async def examples(name: str) -> JSONResponse:
        """Example requests built from held-out rows."""
        if name not in state.models:
            return _unknown_model(name, state)
        return JSONResponse({"examples": state.models[name].examples})

    @v1.post(PREDICT.removeprefix("/v1"))
    async def predict(
        name: str,
        request: Request,
        x_deadline_ms: Annotated[
            float | None,
            Header(
                gt=0,
                allow_inf_nan=False,
                description=(
                    "Milliseconds the client will wait for this answer (at most "
                    "serve.deadline_ms counts). A request that could not be answered in time "
                    "is refused at once (429; 504 for one shorter than an answer takes on "
                    "an idle server) or ends at that deadline (504), so an overloaded "
                    "server spends no work on answers nobody waits for."
                ),
            ),
        ] = None,
        x_capture_source: Annotated[
            str | None,
            Header(
                pattern=r"^[A-Za-z0-9_-]{1,32}$",
                description=(
                    "Whose traffic this is, when not live users' (e.g. `loadtest`, which "
                    "`modelcycle loadtest` sends): captured with the request, and left out of "
                    "the drift tests, which a replay of the examples would set off."
                ),
            ),
        ] = None,
    ) -> JSONResponse:
        """Predict with a served model; the response names the model version."""
        seen = time.perf_counter()
        arrived = seen - state.lag.seconds  # about when it reached the server
        if name not in state.models:
            return _unknown_model(name, state)
        served, batcher = state.models[name], state.batchers[name]
        deadline_ms = _deadline_ms(settings, x_deadline_ms)
        refusal = _refusal(state, name, deadline_ms)  # _Shed answers nearly all before this
        if refusal is not None:  # shed before reading or decoding the body: overload stays cheap
            return refusal
        state.in_progress[name] += 1
        try:
            return await _answered(request, served, batcher, deadline_ms, arrived, x_capture_source)
        finally:
            state.in_progress[name] -= 1

    async def _answered(
        request: Request,
        served: ServedModel,
        batcher: MicroBatcher,
        deadline_ms: float,
        arrived: float,
        source: str | None,
    ) -> JSONResponse:
        """Read, decode, compute and encode one prediction within its deadline (504 after)."""
        name, seen = served.name, time.perf_counter()
        deadline = arrived + deadline_ms / 1000  # on the time.perf_counter() clock

        def late() -> JSONResponse:
            return _error(504, f"{name} did not answer within {_ms(deadline_ms)} ms.")

        try:  # decoding a large image in the decode thread counts too
            payload = await _payload(request, served, settings, state.decoder, deadline)
        except TimeoutError:
            return late()
        if isinstance(payload, JSONResponse):
            return payload
        payload.source = source or LIVE
        try:  # the deadline counts from arrival: waiting, reading and decoding spent some of it
            put = batcher.put(payload, _wait_budget(deadline_ms))
            _on_client_gone(request, put.cancel)  # a queued request nobody waits for: dropped
            result = await asyncio.wait_for(put, max(deadline - time.perf_counter(), 0.0))
        except OverloadedError as err:
            return _overloaded(name, str(err))
        except TimeoutError:
            return late()
        except asyncio.CancelledError:
            if not put.cancelled() or _task_cancelled():
                raise  # the server is stopping this task, not the client leaving
            return _error(499, "The client closed the connection before its answer.")
        state.answer_times[name].add(time.perf_counter() - seen)
        answered = payload.served
        if not result:  # its outputs were not finite (`_run_batch`)
            return _error(
                422,
                f"{name} gave no finite answer for this input: its values lie far beyond the "
                "data the model was trained on (they overflow it); send values in its range.",
            )
        outputs = {k: result[k] for k in answered.answer_outputs}
        # a context only for adapters that made one: an adapter written before contexts
        # existed may take the outputs alone
        context = (payload.rows.context,) if isinstance(payload.rows, Rows) else ()
        if answered.adapter.encode_in_thread:  # a large mask's PNG: within the deadline too
            try:
                encoded = await _in_thread(
                    state.encoder, deadline, answered.adapter.encode, outputs, *context
                )
            except TimeoutError:
                return late()
        else:
            encoded = answered.adapter.encode(outputs, *context)
        body = {"model": name, "version": answered.version, "outputs": encoded}
        return JSONResponse(body)

    if drift is None:

        @v1.get("/models/{name}/drift", include_in_schema=False)
        async def no_drift(name: str) -> JSONResponse:
            return _error(
                404,
                "This server checks no drift: it captures no requests (serve.capture=false). "
                "Start it with serve.capture=true to check drift.",
            )

    app.include_router(v1)
    if drift is not None:
        app.include_router(drift.router("/v1", key_check))
    _document_requests(app, state, keyed=settings.api_key is not None)


def _on_client_gone(request: Request, call: Callable[[], Any]) -> None:
    """Have `call` called if the client leaves unanswered (the server's protocol tells)."""
    gone = request.scope.get(CLIENT_GONE)
    if gone is not None:  # another protocol (a TestClient's) tells nothing
        gone.append(call)


def _task_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def page_html(settings: ServeSettings) -> str:
    """The web page, told what it needs of the server before it asks anything.

    Whether /v1 needs a key: without one, asking for the models first logged the browser's
    own "Failed to load resource: 401" in its console. The body limit: the page shrinks a
    larger image for a model that resizes it anyway (a phone's photo is 3-8 MB).
    """
    told = json.dumps({"api_key": settings.api_key is not None, "body_limit": settings.body_limit})
    html = files("modelcycle.serving").joinpath("static/index.html").read_text()
    return html.replace(PAGE_SETTINGS, told, 1)


def _overloaded(name: str, why: str) -> JSONResponse:
    return _error(429, f"{name} is overloaded ({why}); retry shortly.", {"Retry-After": "1"})


async def _payload(
    request: Request,
    served: ServedModel,
    settings: ServeSettings,
    decoder: ThreadPoolExecutor,
    deadline: float,
) -> _Payload | JSONResponse:
    """Read, parse and validate one request body into model rows, or an error response.

    The body must arrive by `deadline` (`time.perf_counter()`), and has a second at least: a
    client that sends it slowly, or never, holds a connection only that long (408), and a
    request whose deadline is already spent is still read and told what was wrong with it. A
    client gone before its body arrived is answered 499 (nginx's "client closed request"),
    not counted as a server error.

    Adapters whose decoding is heavy (`ServingAdapter.decode_in_thread`: image decoding takes
    milliseconds) decode in the `decoder` thread, so the event loop keeps answering meanwhile;
    TimeoutError when that is not done by `deadline` (`_in_thread`).
    """
    reading = max(deadline - time.perf_counter(), READ_FLOOR)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    adapter = served.adapter
    if content_type != "application/json" and not takes_bytes(adapter, content_type):
        types = accepted_types(adapter)
        return _error(415, f"Content-Type must be {types}, not {content_type or 'none'!r}.")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):  # else a gzip body read as JSON: "byte 0x8b"
        return _error(
            415,
            f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed.",
            {"Accept-Encoding": "identity"},  # RFC 7694
        )
    try:
        async with asyncio.timeout(reading):  # a timer, not wait_for's task per request
            body = await _read_limited(request, settings.body_limit)
    except TimeoutError:
        return _error(
            408,
            f"The request body did not arrive within {reading * 1000:.0f} ms, what was left of "
            "the request's deadline; send it whole (or give a longer X-Deadline-Ms).",
        )
    except ClientDisconnect:
        return _error(499, "The client closed the connection before its body arrived.")
    if body is None:
        files = " (a file as raw bytes, not base64 in JSON, which is a third larger)"
        return _error(
            413,
            f"Request body is larger than {settings.body_limit:,} bytes, this server's "
            f"serve.body_limit; send a smaller body{files if adapter.byte_types else ''}.",
        )
    is_json = content_type == "application/json"
    if not is_json:
        try:
            body = await file_bytes(content_type, request.headers, body)
        except UnsupportedMediaError as err:
            return _error(415, str(err))
        except (RequestError, ValueError) as err:
            return _error(422, str(err))
    if adapter.decode_in_thread:
        decoded = await _in_thread(decoder, deadline, _decode, adapter, is_json, body)
    else:
        decoded = _decode(adapter, is_json, body)
    if isinstance(decoded, JSONResponse):
        return decoded
    rows, features = decoded
    return _Payload(served, rows, features)


async def _in_thread(
    executor: ThreadPoolExecutor, deadline: float, function: Callable[..., T], *args: Any
) -> T:
    """`function(*args)` in `executor`, waited for until `deadline` (`time.perf_counter()`).

    Raises:
        TimeoutError: At the deadline; the thread still finishes the call, unwaited.
    """
    async with asyncio.timeout(max(deadline - time.perf_counter(), 0.0)):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)


def _decode(
    adapter: ServingAdapter, is_json: bool, body: bytes
) -> tuple[list[np.ndarray], dict[str, float]] | JSONResponse:
    """Model rows and drift features of one body (JSON or a file's bytes), or an error."""
    try:
        if is_json:
            rows = adapter.decode(validate_json(adapter.request_type, body))
        else:
            rows = adapter.decode_bytes(body)
    except RecursionError:
        return _error(400, "Body nests deeper than the JSON parser goes; send flatter JSON.")
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return _error(400, f"Body is not valid JSON: {err}.")
    except ValidationError as err:
        return JSONResponse({"detail": _validation_details(err)}, status_code=422)
    except UnsupportedMediaError as err:
        return _error(415, str(err))
    except (RequestError, ValueError) as err:
        return _error(422, str(err))
    return rows, adapter.drift_features(rows)


def validate_json(request_type: type[BaseModel], body: bytes) -> BaseModel:
    """The validated request of a JSON body.

    pydantic parses and validates in one pass (a third of the CPU of `json.loads` and then
    validating the objects); a body it refuses, or one that may hold NaN or Infinity (which
    its parser takes as numbers), goes through `json.loads` instead, which refuses those
    constants and gives the error the client sees. A key an object gives twice is refused
    (`RequestError`), where both parsers would keep its last value.
    """
    if b"NaN" not in body and b"Infinity" not in body:
        with contextlib.suppress(ValidationError):
            request = request_type.model_validate_json(body)
            refuse_repeated_keys(body, request)
            return request
    document = json.loads(
        body,
        parse_constant=_reject_constant,
        parse_int=_whole_number,
        object_pairs_hook=unique_pairs,
    )
    return request_type.model_validate(document)


def _whole_number(text: str) -> int:
    """A JSON integer; one of thousands of digits is named without Python's advice."""
    if len(text) > 4000:  # Python refuses over 4,300 digits: "use sys.set_int_max_str_digits()"
        raise RequestError(
            f"A number in the body has {len(text):,} digits; send numbers the model can hold "
            "(at most about 3.4e38)."
        )
    return int(text)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows; send finite numbers")


def _validation_details(err: ValidationError) -> list[dict[str, Any]]:
    """The errors pydantic found: `SIBLING_ERRORS` of a kind among siblings, `MAX_ERRORS` in all.

    Errors of one type under one parent (every value of a measures object sent as strings)
    beyond the first `SIBLING_ERRORS` are counted in the last one's message, not listed:
    20 copies of one message hid the one different error.
    """
    kept: list[dict[str, Any]] = []
    last: dict[tuple[Any, ...], dict[str, Any]] = {}
    repeats: Counter[tuple[Any, ...]] = Counter()
    for e in err.errors(include_url=False, include_input=False):
        group = (*e["loc"][:-1], e["type"])
        repeats[group] += 1
        if repeats[group] <= SIBLING_ERRORS:
            last[group] = {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
            kept.append(last[group])
    for group, detail in last.items():
        if repeats[group] > SIBLING_ERRORS:
            where = ".".join(str(part) for part in group[:-1]) or "the body"
            detail["msg"] += f" (and {repeats[group] - SIBLING_ERRORS} more like it in {where})"
    return kept[:MAX_ERRORS]


def _key_check(settings: ServeSettings) -> Callable[[Request], Awaitable[None]]:
    """A dependency that enforces the API key on /v1 routes when one is configured.

    A coroutine: FastAPI runs a plain function dependency in a worker thread, a thread hop
    for every request.
    """
    expected = None if settings.api_key is None else settings.api_key.encode()

    async def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("x-api-key") or request.headers.get("authorization", "")
        if not _key_matches(given, expected):
            raise HTTPException(
                401,
                "Missing or wrong API key: send `Authorization: Bearer <key>`.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _key_matches(given: str, expected: bytes) -> bool:
    """`given` (a header: the key, or `Bearer <key>`, any case) is the key; constant-time."""
    given = given.strip()
    if given[:7].lower() == "bearer ":
        given = given[7:].strip()
    return hmac.compare_digest(given.encode(), expected)


def _deadline_ms(settings: ServeSettings, asked_ms: float | None) -> float:
    """A request's deadline: X-Deadline-Ms (`asked_ms`) when shorter than serve.deadline_ms."""
    if asked_ms is None or asked_ms > settings.deadline_ms:
        return settings.deadline_ms
    return asked_ms


def _refusal(state: _State, name: str, deadline_ms: float) -> JSONResponse | None:
    """The answer refusing a request for served model `name` with this deadline now, or None.

    Its model's queue may be full or too slow for its wait budget (`MicroBatcher.refusal`).
    Or too little is left: the deadline counts from when the request reached the server,
    the event loop's lateness (`LoopLag`) is about how long ago that was, and what is left
    must cover the time this model's answers took lately (`RecentTime`). All of that is an
    overload (429, retry shortly), except a deadline shorter than the model takes to answer
    one request: no retry would meet it (504 at once, saying what would).
    """
    batcher = state.batchers[name]
    alone = batcher.service_time()
    if alone is not None and deadline_ms / 1000 < alone:
        return _error(
            504,
            f"{name} cannot answer within {_ms(deadline_ms)} ms: one answer takes it about "
            f"{alone * 1000:.0f} ms, on an idle server too; give a longer X-Deadline-Ms.",
        )
    why = batcher.refusal(_wait_budget(deadline_ms))
    if why is not None:
        return _overloaded(name, why)
    took, lag = state.answer_times[name].estimate(), state.lag.seconds
    if took is not None and not state.in_progress[name]:
        # Nothing else in progress: the recent answers (one large image, decoded for 0.2 s)
        # say nothing of this one's time, and refused requests never renew the estimate.
        took = 0.0
    if took is None or deadline_ms / 1000 - lag >= took:
        return None
    answers = f", and answers take about {took * 1000:.0f} ms now" if took else ""
    return _overloaded(
        name,
        f"{deadline_ms:.0f} ms deadline: about {lag * 1000:.0f} ms went waiting for the event "
        f"loop{answers}",
    )


def _wait_budget(deadline_ms: float) -> float:
    """Seconds a request with this deadline may wait in the queue: a share of it."""
    return deadline_ms / 1000 * WAIT_SHARE


def _unknown_model(name: str, state: _State) -> JSONResponse:
    served = ", ".join(sorted(state.models)) or "none"
    return _error(404, f"Unknown model {name[:100]!r}; served models: {served}.")


def _ms(milliseconds: float) -> str:
    """Milliseconds as a client wrote them, near enough: 250, 0.5 (not "0"), 1e-06."""
    return f"{milliseconds:.0f}" if milliseconds >= 1 else f"{milliseconds:.2g}"


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _document_requests(app: FastAPI, state: _State, keyed: bool = False) -> None:
    """Put each served model's request and answer schemas into the OpenAPI document of predict.

    The document is kept until a served version changes (a hot reload): a new version may
    take other measures or answer other classes. With an API key (`keyed`) the document
    declares it on every /v1 operation (Swagger's Authorize then sends it), and leaves out
    the example requests: they are held-out data, which /v1/models/{name}/examples gives
    only with the key, while the document stays open.
    """
    plain = app.openapi
    documented: list[tuple[str, str]] = []  # the (model, version) pairs the document is for

    def openapi() -> dict[str, Any]:
        versions = [(name, m.version) for name, m in state.models.items()]
        if app.openapi_schema is not None and versions == documented:
            return app.openapi_schema
        app.openapi_schema = None  # FastAPI's own openapi() returns a cached one unchanged
        schema = plain()
        if not state.ready:  # before the models load, do not cache an incomplete document
            app.openapi_schema = None
            return schema
        documented[:] = versions
        # nested models go to components/schemas, where the document's own $refs resolve
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        bodies = []
        for m in state.models.values():
            body = m.adapter.request_schema(ref_template=REF_TEMPLATE)
            components.update(body.pop("$defs", {}))
            bodies.append(body)
        operation = schema["paths"][PREDICT]["post"]
        content = _predict_content(state, bodies, examples=not keyed)
        operation["requestBody"] = {"required": True, "content": content}
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path" and parameter["name"] == "name" and state.models:
                parameter["example"] = next(iter(state.models))  # "Try it out" fills it in
        refusal = {"application/json": {"schema": {"$ref": REF_TEMPLATE.format(model="Refusal")}}}
        components["Refusal"] = {
            "type": "object",
            "properties": {"detail": {"type": "string"}},
            "required": ["detail"],
        }
        operation["responses"]["200"] = {
            "description": "The model's answer, with the model and version that gave it.",
            "content": {"application/json": {"schema": _answer_schema(state)}},
        }
        for status, why in PREDICT_REFUSALS.items():
            operation["responses"][str(status)] = {"description": why, "content": refusal}
        # pydantic's errors are a list; the model's own checks (a width, a link) one sentence
        shapes = ("Refusal", "HTTPValidationError")
        either = [{"$ref": REF_TEMPLATE.format(model=m)} for m in shapes]
        operation["responses"]["422"] = {
            "description": "The body does not fit the model: a list of pydantic's errors, or "
            "one sentence from the model's own checks.",
            "content": {"application/json": {"schema": {"oneOf": either}}},
        }
        if keyed:
            _document_key(schema, refusal)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


#: The API key's two headers, as OpenAPI security schemes (either one will do).
KEY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's API key (serve.api_key or MODELCYCLE_API_KEY).",
    },
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _document_key(schema: dict[str, Any], refusal: dict[str, Any]) -> None:
    """Declare the API key on every /v1 operation of `schema`, with its 401."""
    schema["components"]["securitySchemes"] = KEY_SCHEMES
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    for path, item in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue  # probes, metrics, the page and this document stay open
        for method in methods:
            if method in item:
                item[method]["security"] = [{name: []} for name in KEY_SCHEMES]
                item[method]["responses"]["401"] = {
                    "description": "Missing or wrong API key.",
                    "content": refusal,
                }


def _answer_schema(state: _State) -> dict[str, Any]:
    """A 200 from predict: for each served model, its name, version and its task's outputs."""
    answers = [
        {
            "title": f"{name} answer",
            "type": "object",
            "properties": {
                "model": {"const": name},
                "version": {
                    "type": "string",
                    "description": "The version that answered (the alias can move)",
                    "examples": [m.version],
                },
                "outputs": m.answer_schema(),
            },
            "required": ["model", "version", "outputs"],
            "additionalProperties": False,
        }
        for name, m in state.models.items()
    ]
    if len(answers) == 1:
        return answers[0]
    return {"oneOf": answers} if answers else {}


def _predict_content(
    state: _State, bodies: list[dict[str, Any]], examples: bool = True
) -> dict[str, Any]:
    """Predict's media types: JSON (with each model's first example), and any file types."""
    first = {
        name: {"summary": f"{name}: {m.examples[0]['label']}", "value": m.examples[0]["request"]}
        for name, m in state.models.items()
        if m.examples and examples
    }
    content: dict[str, Any] = {"application/json": {"schema": {"oneOf": bodies} if bodies else {}}}
    if first:
        content["application/json"]["examples"] = first
    binary = {"type": "string", "format": "binary"}
    for m in state.models.values():
        for media in m.adapter.byte_types:
            content[media] = {"schema": binary}
        if m.adapter.byte_types:
            content[MULTIPART] = {
                "schema": {"type": "object", "properties": {"file": binary}, "required": ["file"]}
            }
    return content
