"""Report folders: `<workspace>/reports/<name>-<time>`, each claimed by one command alone.

Commands started within one second on one workspace (two `modelcycle monitor` runs from
cron, two trains in a loop) were given the same folder and overwrote each other's reports.
A folder is claimed by creating it: a name taken already gets `-2`, `-3`, ...
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

#: The second a folder is named for, as in `twins-20260101-120000`.
STAMP = "%Y%m%d-%H%M%S"
#: Folders of one name and second before claiming gives up.
MOST = 999


@dataclass(frozen=True)
class ReportFolder:
    """A report folder named now and claimed when its report is written.

    Args:
        parent: The folder that holds the reports (`<workspace>/reports`).
        name: What the report is of, e.g. `drift-twins-v3`.
        stamp: The second it is named for; now by default.
    """

    parent: Path
    name: str
    stamp: str = field(default_factory=lambda: time.strftime(STAMP))

    @property
    def base(self) -> Path:
        """The folder's path before claiming: `<parent>/<name>-<stamp>`."""
        return self.parent / f"{self.name}-{self.stamp}"

    def claim(self) -> Path:
        """Create the first free folder of `base`, `base-2`, `base-3`, ... and return it.

        Raises:
            FileExistsError: Every one of the MOST names is taken.
        """
        base = self.base
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, MOST + 1):
            folder = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            return folder
        raise FileExistsError(
            f"{base}: {MOST} report folders of this name and second exist already; "
            "remove old ones from that folder."
        )


def new_report_dir(workspace: Path, name: str) -> Path:
    """A report folder `reports/<name>-<time>` of `workspace`, made now for one command alone."""
    return ReportFolder(workspace / "reports", name).claim()


def claimed(folder: Path | ReportFolder) -> Path:
    """`folder` made ready to write into when its report is about to be written.

    A path (a user's `--out`) is made if missing and may hold an earlier report; a
    ReportFolder is claimed now, so a command that fails before it reports leaves none.
    """
    if isinstance(folder, ReportFolder):
        return folder.claim()
    folder.mkdir(parents=True, exist_ok=True)
    return folder
