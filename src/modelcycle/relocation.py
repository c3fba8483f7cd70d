"""A workspace moved or copied to another folder: its stored paths rewritten to the new one.

MLflow's SQLite store records folders as absolute paths: the experiment's artifact folder,
each run's, each registered version's source, and our tags that name report folders. In
a workspace moved (a renamed project folder, a copy on another machine, a volume mounted
elsewhere) every registered version is still read from the old place, and new runs write
there. `relocate` rewrites every such path in `mlflow.db` from the old workspace folder to
this one, after a copy of the database is kept beside it.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

#: The folder, inside a workspace, where its own store keeps run files.
ARTIFACTS = "artifacts"


class RelocationError(ValueError):
    """A workspace that cannot be relocated; the message says why and what to do."""


@dataclass(frozen=True)
class Relocated:
    """What `relocate` changed: the folder it came from, values rewritten, the backup."""

    old: Path | None
    values: int = 0
    backup: Path | None = None


def former_folder(store: Path) -> Path | None:
    """The folder the workspace of `store` (its mlflow.db) was made in, if it was elsewhere.

    Read from the experiments' artifact folders (`<workspace>/artifacts`); None when each
    is inside this workspace, or is a folder the user chose (not named `artifacts`).

    Raises:
        RelocationError: The experiments were made in more than one other folder.
    """
    here = store.parent.resolve()
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        locations = [row[0] for row in db.execute("SELECT artifact_location FROM experiments")]
    found = {
        folder.parent
        for folder in map(_as_path, locations)
        if folder is not None and folder.name == ARTIFACTS and folder.parent != here
    }
    if len(found) > 1:
        raise RelocationError(
            f"{store}: its experiments were made in {len(found)} other folders "
            f"({', '.join(map(str, sorted(found)))}); relocate from one with --former DIR."
        )
    return found.pop() if found else None


def relocate(store: Path, former: Path | None = None) -> Relocated:
    """Rewrite every path under `former` (default: `former_folder`) in `store` to its folder.

    The database is copied to `mlflow.db.before-relocate-<time>` first (SQLite's backup, so
    a copy taken while another process writes is whole).

    Raises:
        RelocationError: No store there, or `former` is this workspace itself.
    """
    if not store.is_file():
        raise RelocationError(
            f"{store}: no tracking store; point workspace= at a workspace that holds mlflow.db."
        )
    old = former.expanduser().resolve() if former is not None else former_folder(store)
    new = store.parent.resolve()
    if old is None:
        return Relocated(None)
    if old == new:
        raise RelocationError(f"--former {old} is this workspace itself: nothing to rewrite.")
    backup = _backup(store)
    with sqlite3.connect(store) as db:
        values = sum(_rewrite(db, table, old, new) for table in _tables(db))
    return Relocated(old, values, backup)


def _as_path(location: str | None) -> Path | None:
    """A `file:` URI or plain path as a path; None for other schemes (s3:, mlflow-artifacts:)."""
    if not location:
        return None
    if location.startswith("file:"):
        return Path(url2pathname(urlparse(location).path))
    return Path(location) if location.startswith("/") else None


def _backup(store: Path) -> Path:
    """A copy of `store` beside it, in a file of its own (`-2`, `-3` within one second)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = store.with_name(f"{store.name}.before-relocate-{stamp}")
    backup = next(
        path
        for path in (base, *(base.with_name(f"{base.name}-{n}") for n in range(2, 10_000)))
        if not path.exists()
    )
    with sqlite3.connect(store) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    return backup


def _tables(db: sqlite3.Connection) -> list[str]:
    rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return [name for (name,) in rows if not name.startswith("sqlite_")]


def _rewrite(db: sqlite3.Connection, table: str, old: Path, new: Path) -> int:
    """Rewrite `old` to `new` in every text value of `table`; the number of values changed.

    Every text column is looked at, not a list of MLflow's: its schema changes between
    releases, and our tags (report folders, lineage) hold paths too.
    """
    columns = [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]
    pattern = _old_forms(old)
    changed = 0
    for column in columns:
        rows = db.execute(
            f'SELECT rowid, "{column}" FROM "{table}" WHERE typeof("{column}") = \'text\''
        ).fetchall()
        for rowid, value in rows:
            moved = pattern.sub(lambda m: _new_form(m.group(0), old, new), value)
            if moved != value:
                db.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?', (moved, rowid))
                changed += 1
    return changed


def _old_forms(old: Path) -> re.Pattern[str]:
    """`old` as a file URI (quoted or not) or a plain path: whole folder names only.

    Not inside a longer path (`/y/x/ws` for `/x/ws`), nor a longer name (`/x/ws2`).
    """
    forms = sorted({old.as_uri(), f"file://{old}", str(old)}, key=len, reverse=True)
    either = "|".join(map(re.escape, forms))
    return re.compile(rf"(?<![\w./~-])(?:{either})(?![\w.~-])")


def _new_form(found: str, old: Path, new: Path) -> str:
    if found == old.as_uri():
        return new.as_uri()
    return f"file://{new}" if found.startswith("file:") else str(new)
