"""The prediction capture store: every served prediction, kept in SQLite for drift monitoring.

The server records each prediction (the input's drift features, the outputs, model name and
version, latency and time) and writes a whole micro-batch in one transaction from a worker
thread before it answers those requests. Drift monitoring later reads the captures back and
compares them with the model's reference sample.

Durability: the database runs in WAL mode with ``synchronous=NORMAL``. A transaction is in the
WAL file (handed to the operating system) when `CaptureStore.write` returns, so every
acknowledged prediction survives a crash or ``kill -9`` of the server process. Only an
operating-system crash or a power loss can lose the last transactions committed before it,
since NORMAL fsyncs the WAL at checkpoints rather than at every commit; the database itself is
never corrupted.

Checkpoints (copying the WAL into the database, with an fsync) never run on the thread that
writes a batch: its connections have automatic checkpoints off, and a background thread runs
a PASSIVE checkpoint (which never blocks readers or writers) every `CHECKPOINT_SECONDS`, from
the store's first write until it is closed. An automatic checkpoint stalled the batch that
triggered it, and with it every request in that batch, for the length of an fsync.

Non-finite numbers (NaN, +inf, -inf) in features or outputs are stored as JSON ``null`` and
read back as ``float("nan")``, so the stored JSON is always valid.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from modelcycle.messages import clause

BUSY_TIMEOUT_MS = 5000
CHECKPOINT_SECONDS = 1.0  # how often the background thread checkpoints the WAL

log = logging.getLogger(__name__)

_VARIANT = "variant TEXT NOT NULL DEFAULT 'fp32'"  # the column; see _ADD_VARIANT
_SOURCE = "source TEXT NOT NULL DEFAULT 'live'"  # the column; see _ADD_SOURCE
#: Traffic that clients do not mark (`X-Capture-Source`): what drift is tested on.
LIVE = "live"
_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS captures (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        latency_ms REAL,
        features TEXT NOT NULL,
        outputs TEXT NOT NULL,
        {_VARIANT},
        {_SOURCE}
    )""",
    "CREATE INDEX IF NOT EXISTS captures_model_at ON captures (model, at)",
)
# Stores written before captures named the exported file that answered: all fp32 then.
_ADD_VARIANT = f"ALTER TABLE captures ADD COLUMN {_VARIANT}"
# Stores written before clients could mark test traffic: all live then.
_ADD_SOURCE = f"ALTER TABLE captures ADD COLUMN {_SOURCE}"
_INSERT = (
    "INSERT INTO captures (at, model, version, latency_ms, features, outputs, variant, source) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COLUMNS = "at, model, version, latency_ms, features, outputs, variant, source"

_Row = tuple[float, str, str, float, str, str, str, str]


class CaptureError(RuntimeError):
    """The capture store cannot be opened or written; the message names the file and the fix."""


@dataclass(frozen=True)
class Capture:
    """One served prediction.

    Attributes:
        model: Registered model name.
        version: Model version that answered.
        features: Drift features of the input; NaN/inf are stored as null, read back as NaN.
        outputs: The model's outputs, by name; same NaN rule as `features`.
        latency_ms: Time to answer, in milliseconds.
        at: When the prediction was served, in unix seconds.
        variant: The exported file that answered (`serve.variant`: fp32 or int8).
        source: Whose traffic: `live` unless the client marked it (`X-Capture-Source`, e.g.
            `loadtest`); drift is tested on live traffic only.
    """

    model: str
    version: str
    features: dict[str, float]
    outputs: dict[str, float]
    latency_ms: float
    at: float
    variant: str = "fp32"
    source: str = LIVE


class CaptureStore:
    """Captured predictions in one SQLite file, safe to share between threads.

    Settings: ``journal_mode=WAL``, ``synchronous=NORMAL`` and ``busy_timeout=5000`` ms. With
    WAL + NORMAL every committed transaction survives a crash or ``kill -9`` of the process;
    only an operating-system crash or a power loss can lose the last committed transactions.

    Each thread gets its own connection (see `_connection`). Call `close` once the threads
    using the store have stopped.

    Args:
        path: The SQLite file; it and its parent directories are created when missing.

    Raises:
        CaptureError: The path cannot be opened as a SQLite database in WAL mode.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # One connection per thread rather than one shared connection behind a lock: in WAL
        # mode readers never block the writer, so a long drift read cannot delay the worker
        # thread's write (and with it the answers to the requests); SQLite itself serialises
        # writers, waiting up to busy_timeout. Connections are also kept in `_open` so `close`
        # (from any thread, hence check_same_thread=False) and the pruning of connections
        # left by finished threads can reach them; each is otherwise used by its thread only.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._closed = False
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()
        self._prepare()

    def write(self, rows: Sequence[Capture]) -> None:
        """Record captures in one transaction, committed before returning.

        Args:
            rows: The captures of one micro-batch; an empty sequence writes nothing.

        Raises:
            CaptureError: A capture is malformed or the transaction failed; nothing was written.
        """
        if not rows:
            return
        encoded = [_encode(row) for row in rows]
        conn = self._connection()
        if self._checkpointer is None:
            self._start_checkpoints()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, encoded)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as err:
            raise CaptureError(
                f"Could not record {len(rows)} captures in {self.path}: {clause(err)}. Nothing was "
                "written; check the disk has free space and that no other process holds a "
                f"write lock on the file for more than {BUSY_TIMEOUT_MS} ms."
            ) from err

    def read(
        self,
        model: str | None = None,
        since: float | None = None,
        last: int | None = None,
        version: str | None = None,
        variant: str | None = None,
        source: str | None = None,
    ) -> list[Capture]:
        """Captured predictions, oldest first (by `Capture.at`, then by insertion).

        Args:
            model: Only this model's captures; all models when None.
            since: Only captures with ``at >= since`` (unix seconds).
            last: Only the newest `last` captures (still returned oldest first).
            version: Only captures answered by this model version.
            variant: Only captures answered by this exported file (fp32 or int8).
            source: Only captures of this traffic (`LIVE`, or what a client marked).

        Returns:
            The matching captures.

        Raises:
            ValueError: `last` is negative.
        """
        if last is not None and last < 0:
            raise ValueError(f"last must be >= 0 (the number of newest captures), got {last}")
        where, params = _where(model, since, version, variant, source)
        if last is None:
            sql = f"SELECT {_COLUMNS} FROM captures{where} ORDER BY at, id"
        else:
            sql = (
                f"SELECT {_COLUMNS} FROM (SELECT {_COLUMNS}, id FROM captures{where} "
                "ORDER BY at DESC, id DESC LIMIT ?) ORDER BY at, id"
            )
            params.append(last)
        rows = self._connection().execute(sql, params).fetchall()
        return [_decode(row) for row in rows]

    def count(self, model: str | None = None) -> int:
        """Number of captures, of one model or of all models when `model` is None."""
        where, params = _where(model, None)
        row = self._connection().execute(f"SELECT COUNT(*) FROM captures{where}", params)
        return int(row.fetchone()[0])

    def close(self) -> None:
        """Close every thread's connection; the store cannot be used afterwards."""
        self._stop_checkpoints.set()
        if self._checkpointer is not None and self._checkpointer is not threading.current_thread():
            self._checkpointer.join()
        with self._lock:
            self._closed = True
            for _, conn in self._open:
                conn.close()
            self._open.clear()

    def __enter__(self) -> CaptureStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _prepare(self) -> None:
        """Create the file, switch it to WAL and create the table, or raise CaptureError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connection()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            for statement in _SCHEMA:
                conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(captures)")}
            for column, add in (("variant", _ADD_VARIANT), ("source", _ADD_SOURCE)):
                if column not in columns:
                    _add_column(conn, add)
        except (OSError, sqlite3.Error) as err:
            self.close()
            raise CaptureError(
                f"Cannot open the capture store {self.path}: {clause(err)}. Give the path of a "
                "SQLite file (or of a new file) in a writable directory, not a directory or "
                "another kind of file."
            ) from err
        if str(mode).lower() != "wal":
            self.close()
            raise CaptureError(
                f"The capture store {self.path} cannot use WAL mode (journal_mode is {mode!r}); "
                "put it on a local filesystem, not a network share."
            )

    def _start_checkpoints(self) -> None:
        """Start the background checkpoint thread (once)."""
        with self._lock:
            if self._checkpointer is not None or self._closed:
                return
            self._checkpointer = threading.Thread(
                target=self._checkpoints, name="capture-checkpoint", daemon=True
            )
            self._checkpointer.start()

    def _checkpoints(self) -> None:
        """A PASSIVE checkpoint every CHECKPOINT_SECONDS and at `close`, on its own connection."""
        conn = _connect(self.path)
        try:
            stopping = False
            while not stopping:
                stopping = self._stop_checkpoints.wait(CHECKPOINT_SECONDS)
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as err:  # the next one retries; writers are unaffected
                    log.warning("Checkpointing the capture store %s failed: %s", self.path, err)
        finally:
            conn.close()

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and set up) on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise CaptureError(f"The capture store {self.path} is closed; open a new one.")
            self._prune()
            conn = _connect(self.path)
            self._open.append((threading.current_thread(), conn))
        self._local.conn = conn
        return conn

    def _prune(self) -> None:
        """Close the connections of threads that have finished (call with the lock held)."""
        alive = []
        for thread, conn in self._open:
            if thread.is_alive():
                alive.append((thread, conn))
            else:
                conn.close()
        self._open = alive


def _connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the store's pragmas."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the background thread checkpoints
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _add_column(conn: sqlite3.Connection, statement: str) -> None:
    """Upgrade a store from before a column existed (another process may upgrade it too)."""
    try:
        conn.execute(statement)
    except sqlite3.OperationalError as err:
        if "duplicate column" not in str(err):
            raise


def _where(
    model: str | None,
    since: float | None,
    version: str | None = None,
    variant: str | None = None,
    source: str | None = None,
) -> tuple[str, list[object]]:
    """The WHERE clause and its parameters for the optional filters."""
    clauses: list[str] = []
    params: list[object] = []
    if model is not None:
        clauses.append("model = ?")
        params.append(model)
    if version is not None:
        clauses.append("version = ?")
        params.append(version)
    if variant is not None:
        clauses.append("variant = ?")
        params.append(variant)
    if source is not None:
        clauses.append("source = ?")
        params.append(source)
    if since is not None:
        clauses.append("at >= ?")
        params.append(float(since))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _encode(row: Capture) -> _Row:
    """One capture as the inserted tuple; raises CaptureError on values that are not numbers."""
    at = _number(row.at, row, "at")
    if not math.isfinite(at):
        raise CaptureError(f"Capture of {row.model} has at={row.at!r}; give unix seconds.")
    return (
        at,
        str(row.model),
        str(row.version),
        _number(row.latency_ms, row, "latency_ms"),
        _dump(row.features, row, "features"),
        _dump(row.outputs, row, "outputs"),
        str(row.variant),
        str(row.source),
    )


def _number(value: object, row: Capture, name: str) -> float:
    """`value` as a float, or CaptureError naming the capture's field."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as err:
        raise CaptureError(
            f"Capture of {row.model} {row.version} has {name}={value!r}, not a number; give floats."
        ) from err


def _dump(values: Mapping[str, float], row: Capture, field: str) -> str:
    """Values as a JSON object, NaN and infinities as null (never invalid JSON)."""
    clean: dict[str, float | None] = {}
    for key, value in values.items():
        number = _number(value, row, f"{field}[{key!r}]")
        clean[str(key)] = number if math.isfinite(number) else None
    return json.dumps(clean, allow_nan=False, separators=(",", ":"))


def _load(text: str) -> dict[str, float]:
    """A stored JSON object back to floats, null as NaN."""
    return {
        key: math.nan if value is None else float(value) for key, value in json.loads(text).items()
    }


def _decode(row: tuple[float, str, str, float | None, str, str, str, str]) -> Capture:
    """A selected row as a Capture (SQLite stores a NaN latency as NULL: read back as NaN)."""
    at, model, version, latency_ms, features, outputs, variant, source = row
    return Capture(
        model=model,
        version=version,
        features=_load(features),
        outputs=_load(outputs),
        latency_ms=math.nan if latency_ms is None else latency_ms,
        at=at,
        variant=variant,
        source=source,
    )
