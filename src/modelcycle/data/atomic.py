"""Files and folders written whole or not at all: made under a temporary name beside, renamed.

A reader (a later command, another process) finds the earlier file or the new one, never
part of one: `os.replace` within one folder swaps the name in one step (a POSIX rename;
MoveFileEx on Windows). A write that fails or is interrupted leaves the earlier file as it
was, and its temporary file is removed. A folder is filled the same way (`replacing_folder`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; once the block ends without error, it is `path`.

    The temporary name starts with a dot, so no `*.npy`-style lookup finds it, and keeps
    `path`'s suffix: numpy, pandas and matplotlib choose the format from it. Its contents
    reach the disk before the rename, so a crash of the machine cannot leave `path` naming
    a file whose data was never written.

    Yields:
        Where to write; the caller creates the file there.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` to fill; once the block ends without error, it is `path`.

    An earlier folder at `path` stays whole until the new one is complete; it is then moved
    aside and removed. No rename puts a folder over a non-empty one, so the swap takes two:
    a crash between them leaves no `path` and the earlier folder whole beside it, under a
    hidden `.NAME.old-*` name. A fill that fails or is interrupted leaves `path` as it was,
    and the temporary folder is removed. Every file reaches the disk before the rename.

    Yields:
        The new, empty folder (its parents are created) to write into.
    """
    tmp = _beside(path, "new")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for file in (p for p in tmp.rglob("*") if p.is_file()):
            with file.open("rb+") as written:
                os.fsync(written.fileno())
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _beside(path: Path, role: str) -> Path:
    """A hidden, unique name in `path`'s folder."""
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}")


def _swap_in(new: Path, path: Path) -> None:
    """Rename folder `new` to `path`; a folder already there is moved aside, then removed."""
    if not path.is_dir():
        os.replace(new, path)
        return
    old = _beside(path, "old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
