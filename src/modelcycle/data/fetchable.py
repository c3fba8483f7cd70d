"""What `modelcycle data fetch NAME` fetches: every data group whose source downloads itself.

A data group, built in or from a package's `modelcycle.configs`, can be fetched when the
class its `_target_` names has `resolve_root()` and takes `download_dir`: the image sets,
BCSS, Wiki-CS, and an outside source written the same way. QTIM's structural tables and its
synthetic rest-fMRI cohort have commands of their own (`qtim`, `qtim-synthetic`).
"""

from __future__ import annotations

import inspect
from typing import Any

import yaml
from hydra.utils import get_class

from modelcycle.config import data_configs
from modelcycle.data.tables import DataError

#: Data groups fetched by a name of their own (`data fetch qtim`, `data fetch qtim-synthetic`).
OWN_COMMANDS = ("qtim", "qtim_func")


def source_class(name: str) -> type | None:
    """The class data group `name` builds, if it downloads itself; None for any other name.

    Raises:
        DataError: The group's `_target_` does not import (a package installed in part).
    """
    config = data_configs().get(name)
    if config is None or name in OWN_COMMANDS:
        return None
    target = (yaml.safe_load(config.read_text()) or {}).get("_target_")
    if not isinstance(target, str):
        return None
    try:
        cls = get_class(target)
    except Exception as err:  # hydra wraps the ImportError or AttributeError it met
        raise DataError(
            f"data group {name}: its source {target} does not import ({err}). Reinstall the "
            "package that ships it."
        ) from err
    downloads = callable(getattr(cls, "resolve_root", None)) and takes(cls, "download_dir")
    return cls if downloads else None


def fetchable() -> dict[str, type]:
    """Each data group `data fetch` can fetch, with its class (one that does not import: not)."""
    found = {}
    for name in sorted(data_configs()):
        try:
            cls = source_class(name)
        except DataError:
            continue  # said when the name is asked for
        if cls is not None:
            found[name] = cls
    return found


def takes(cls: Any, key: str) -> bool:
    """Whether `cls(key=...)` is accepted (a dataclass field or a constructor argument)."""
    try:
        return key in inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read
        return False
