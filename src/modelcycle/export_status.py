"""Whether a version's last export finished: its `export.status` tag, written and read.

An export writes the tag first as "running", and last as "ok" once every other export tag
is set and the earlier export's tags it did not write are removed, or as "failed: why" when
it stops. Files and tags of an earlier export stay on the version meanwhile (a registry
keeps what was attached), so the tag, not their presence, says whether they may be served.
A version exported before the tag existed has none, and serves.
"""

from __future__ import annotations

#: Every tag an export writes starts with this; a successful export leaves only its own.
TAG_PREFIX = "export."
STATUS_TAG = f"{TAG_PREFIX}status"
RUNNING = "running"
OK = "ok"
FAILED = "failed"
#: Longest reason kept in the tag (the first line of the error that stopped the export).
REASON_CHARS = 300


def failed(err: BaseException, stopped_by: str = "Ctrl-C") -> str:
    """The status an export stopped by `err` leaves: "failed: <error type>: <first line>".

    Args:
        err: What stopped it.
        stopped_by: What sent a KeyboardInterrupt ("Ctrl-C" or "SIGTERM").
    """
    if isinstance(err, KeyboardInterrupt):
        return f"{FAILED}: stopped by {stopped_by} before it finished"
    lines = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{FAILED}: {reason[:REASON_CHARS]}"


def refusal(tags: dict[str, str], where: str, reference: str) -> str | None:
    """Why a version whose tags are `tags` must not be served, or None when it may.

    Args:
        tags: The version's tags.
        where: The version as people name it, e.g. "twins version 3".
        reference: How the user named it, for the command that fixes it.
    """
    status = tags.get(STATUS_TAG)
    if status is None or status == OK:  # no tag: exported before the status was recorded
        return None
    again = f"re-run `modelcycle export {reference}`"
    if status == RUNNING:
        return (
            f"{where}: its last export has not finished (it is still running, or was stopped "
            f"before it could say so); wait for it to end, or {again}."
        )
    reason = status.removeprefix(f"{FAILED}:").strip() or "no reason recorded"
    return f"{where}: its last export failed ({reason}), so it is not served; {again}."
