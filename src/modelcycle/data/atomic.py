"""Files and folders written whole or not at all: made under a temporary name beside, renamed.

A reader (a later command, another process) finds the earlier file or the new one, never
part of one: `os.replace` within one folder swaps the name in one step (a POSIX rename;
MoveFileEx on Windows). A write that fails or is interrupted leaves the earlier file as it
was, and its temporary file is removed. A folder is filled the same way (`replacing_folder`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sys
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

    An earlier folder at `path` stays whole until the new one is complete; the two are then
    exchanged in one step where the system can (Linux `renameat2` with `RENAME_EXCHANGE`),
    and the earlier one removed. Elsewhere no rename puts a folder over a non-empty one, so
    the swap takes two: a crash between them leaves no `path` and the earlier folder whole
    beside it, under a hidden `.NAME.old-PID-*` name, which the next fill of `path` puts back
    first. A fill that fails or is interrupted leaves `path` as it was, and the temporary
    folder is removed; one killed outright leaves `.NAME.new-PID-*`, which the next fill
    removes once its process is gone. Every file reaches the disk before the swap.

    Yields:
        The new, empty folder (its parents are created) to write into.
    """
    _clean_leftovers(path)
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
    """A hidden, unique name in `path`'s folder, naming the process that made it."""
    return path.with_name(f".{path.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}")


def _clean_leftovers(path: Path) -> None:
    """Put back or remove what a killed fill of `path` left beside it (see `replacing_folder`).

    Only folders whose process is gone: another fill of the same folder may be running.
    """
    if not path.parent.is_dir():
        return
    names = sorted(p.name for p in path.parent.iterdir())
    for role in ("old", "new"):
        prefix = f".{path.name}.{role}-"
        for name in (n for n in names if n.startswith(prefix)):
            left, (pid, _, token) = path.parent / name, name[len(prefix) :].partition("-")
            if not (pid.isdigit() and token) or _alive(int(pid)) or not left.is_dir():
                continue
            if role == "old" and not path.exists():
                os.replace(left, path)  # the earlier folder, whole: the swap never finished
            else:
                shutil.rmtree(left, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process `pid` runs on this machine (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _swap_in(new: Path, path: Path) -> None:
    """Rename folder `new` to `path`; a folder already there ends at `new`, or is removed."""
    if not path.is_dir():
        os.replace(new, path)
        return
    if _exchange(new, path):
        return  # the earlier folder is now at `new`, which the caller removes
    old = _beside(path, "old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap what `a` and `b` name in one step; False where the system cannot (then unchanged).

    Linux's `renameat2(RENAME_EXCHANGE)` (glibc 2.28+, most local filesystems). Other
    systems, and filesystems that refuse the flag, answer False.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    renameat2.argtypes += [ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    done = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), str(b))
