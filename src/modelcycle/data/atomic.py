"""Files written whole or not at all: written under a temporary name beside, then renamed.

A reader (a later command, another process) finds the earlier file or the new one, never
part of one: `os.replace` within one folder swaps the name in one step (a POSIX rename;
MoveFileEx on Windows). A write that fails or is interrupted leaves the earlier file as it
was, and its temporary file is removed.
"""

from __future__ import annotations

import os
import secrets
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
