"""What the registry holds, as rows: its models, and each version's gate metric and export.

`modelcycle models` prints them as tables (or JSON); everything comes from the registry's
own records (aliases, and the tags registration and export write), so it reads the same
from a local workspace or a tracking server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from modelcycle.export_status import OK, STATUS_TAG
from modelcycle.registry import Registered, Registry

#: The exported variants a version may carry, as `export.VARIANT.sha256` tags.
VARIANTS = ("fp32", "int8")


@dataclass(frozen=True)
class ModelRow:
    """One registered model: its task, how many versions, where its aliases point."""

    name: str
    task: str
    versions: int
    latest: str
    aliases: dict[str, str]


@dataclass(frozen=True)
class VersionRow:
    """One version: when, its aliases, its gate metric beside the baseline, its export."""

    version: str
    registered: str  # ISO 8601, UTC, to the second
    aliases: list[str]
    metric: str  # the gate's metric (empty for a version registered without one)
    model_mean: float | None
    model_std: float | None
    baseline_mean: float | None
    export: str  # ok, failed: why, running, not exported
    variants: list[str]  # the exported files that may be served: fp32, int8
    git_sha: str
    git_dirty: str
    data_hash: str
    run_id: str

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON-ready values."""
        return asdict(self)


def model_rows(registry: Registry) -> list[ModelRow]:
    """Every registered model, by name."""
    rows = []
    for name in registry.models():
        versions = registry.versions(name)
        task = versions[0].tags.get("lineage.task", "") if versions else ""
        latest = versions[0].version if versions else "-"
        rows.append(ModelRow(name, task, len(versions), latest, registry.aliases(name)))
    return rows


def version_rows(registry: Registry, name: str) -> list[VersionRow]:
    """Every version of `name`, newest first (RegistryError naming the models if none)."""
    held: dict[str, list[str]] = {}
    for alias, version in sorted(registry.aliases(name).items()):
        held.setdefault(version, []).append(alias)
    return [_row(v, held.get(v.version, [])) for v in registry.versions(name)]


def _row(version: Registered, aliases: list[str]) -> VersionRow:
    tags = version.tags
    metric = tags.get("gate.metric", "")
    variants = [v for v in VARIANTS if f"export.{v}.sha256" in tags]
    status = tags.get(STATUS_TAG)
    if status is None:  # exported before the status was recorded, or never
        status = OK if variants else "not exported"
    when = datetime.fromtimestamp(version.registered_at, UTC).isoformat(timespec="seconds")
    return VersionRow(
        version=version.version,
        registered=when if version.registered_at else "",
        aliases=aliases,
        metric=metric,
        model_mean=_number(tags.get(f"metric.model_{metric}_mean")),
        model_std=_number(tags.get(f"metric.model_{metric}_std")),
        baseline_mean=_number(tags.get(f"metric.baseline_{metric}_mean")),
        export=status,
        variants=variants if status == OK else [],
        git_sha=tags.get("lineage.git_sha", "unknown"),
        git_dirty=tags.get("lineage.git_dirty", "unknown"),
        data_hash=tags.get("lineage.data_hash", ""),
        run_id=version.run_id,
    )


def _number(text: str | None) -> float | None:
    """A metric tag's value; None when missing or not a finite number."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None
