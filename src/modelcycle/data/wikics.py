"""Wiki-CS (Mernyei & Cangea, 2020) through PyG's `WikiCS`: computer science articles.

Wikipedia's articles on computer science as a graph of hyperlinks, each article classified
into one of 10 branches of the field.

Layout under the root, as PyG keeps it: `raw/data.json` (downloaded from the dataset's
GitHub repository) holds `features` (one 300-number vector per article: the mean GloVe
embedding of its words), `labels` (0-9), `links` (each article's hyperlinks, as article
indices), 20 `train_masks`, 20 `stopping_masks` (early stopping), 20 `val_masks` and one
`test_mask`; PyG writes its processed copy to `processed/`. Links are read as undirected.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelcycle.data.image_set import hash_files
from modelcycle.data.openneuro import FetchError, FetchRecord, hash_tree, write_manifest
from modelcycle.data.standin import check_root, standin_root
from modelcycle.data.tables import DataError
from modelcycle.kinds import Range
from modelcycle.messages import clause

log = logging.getLogger(__name__)

RAW = Path("raw") / "data.json"
#: The branches of computer science the articles belong to, in label order (the dataset
#: repository's metadata.json).
CLASSES = (
    "Computational linguistics",
    "Databases",
    "Operating systems",
    "Computer architecture",
    "Computer security",
    "Internet protocols",
    "Computer file systems",
    "Distributed computing architecture",
    "Web technology",
    "Programming language topics",
)


#: How far the stand-in's features lie towards their class's direction, in noise units.
STANDIN_SIGNAL = 0.12


@dataclass(frozen=True)
class GraphSet:
    """One graph with a class per node and the dataset's official splits.

    Attributes:
        features: (n, d) float32 node features.
        labels: (n,) class index into `classes`.
        classes: Class names.
        neighbors: Each node's neighbours (sorted, undirected, no self-links).
        train_masks: (splits, n) bool: each official split's training nodes.
        stopping_masks: (splits, n) bool: each split's early-stopping nodes.
        test_mask: (n,) bool: the test nodes, the same for every split.
        data_hash: sha256 of `raw/data.json`.
        notes: What was read, for the report.
    """

    features: np.ndarray
    labels: np.ndarray
    classes: list[str]
    neighbors: list[np.ndarray]
    train_masks: np.ndarray
    stopping_masks: np.ndarray
    test_mask: np.ndarray
    data_hash: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class WikiCSSource:
    """Wiki-CS: a local copy, PyG's download, or the synthetic stand-in.

    Args:
        root: A folder holding `raw/data.json`.
        download_dir: Where to download to (or write the stand-in to) when `root` is not given.
        synthetic: Write and use the offline stand-in (the real file format) instead (in
            `download_dir`: refused beside `root`).
        synthetic_nodes: Articles in the stand-in (the real graph has 11,701).
        seed: Seed of the stand-in.
    """

    dataset: ClassVar[str] = "wikics"
    RANGES: ClassVar[dict[str, Range]] = {"synthetic_nodes": (50, None)}
    root: Path | None = None
    download_dir: Path = Path(".modelcycle/data/wikics")
    synthetic: bool = False
    synthetic_nodes: int = 2000
    seed: int = 0

    def resolve_root(self) -> Path:
        """The local copy: `root`, else the stand-in (written once), else a download."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            check_root(root, self.dataset, self.synthetic)
            if not (root / RAW).is_file():
                raise DataError(
                    f"data.root={root} holds no {RAW}: point it at a Wiki-CS copy, or leave it "
                    "empty to download it."
                )
            return root
        target = Path(self.download_dir)

        def write() -> Path:
            log.info("Writing the synthetic Wiki-CS stand-in to %s", target)
            return write_wikics_standin(target, self.synthetic_nodes, self.seed)

        present = (target / RAW).is_file()
        spec = {"synthetic_nodes": self.synthetic_nodes, "seed": self.seed}
        standin = standin_root(target, "wikics", spec, self.synthetic, present, write)
        if standin is not None:
            return standin
        if present:
            return target
        return fetch_wikics(target).root

    def load(self) -> GraphSet:
        """Read the graph through PyG's `WikiCS` (which processes `raw/data.json` once)."""
        return read_wikics(self.resolve_root())


def _wikics() -> Any:
    from torch_geometric.datasets import WikiCS

    return WikiCS


def read_wikics(root: Path) -> GraphSet:
    """The graph of a copy in PyG's layout, read by PyG's own `WikiCS` class.

    Raises:
        DataError: A file PyG cannot read, a link to no article, or masks of the wrong shape.
    """
    try:
        # PyG reuses processed/ even when raw/data.json changed since; the data hash is the
        # raw file's, so the graph is processed from it at every read (seconds).
        with contextlib.redirect_stderr(io.StringIO()):  # PyG's "Processing... Done!"
            data = _wikics()(str(root), is_undirected=True, force_reload=True)[0]
    except (KeyError, ValueError, TypeError, json.JSONDecodeError) as err:
        raise DataError(f"{root / RAW}: not a Wiki-CS data.json ({clause(err)}).") from err
    n = int(data.num_nodes)
    edges = data.edge_index.numpy()
    _check_links(edges, n, root / RAW)
    edges = edges[:, edges[0] != edges[1]]
    order = np.lexsort((edges[1], edges[0]))
    sources, targets = edges[0][order], edges[1][order]
    starts = np.searchsorted(sources, np.arange(n + 1))
    neighbors = [targets[starts[i] : starts[i + 1]] for i in range(n)]
    labels = data.y.numpy()
    n_classes = int(labels.max()) + 1
    classes = list(CLASSES) if n_classes <= len(CLASSES) else [str(c) for c in range(n_classes)]
    train, stopping = data.train_mask.numpy().T, data.stopping_mask.numpy().T
    test = data.test_mask.numpy()
    if train.shape != stopping.shape or train.shape[1] != n or test.shape != (n,):
        raise DataError(f"{root / RAW}: masks do not match the {n} articles; re-download it.")
    degrees = np.array([len(x) for x in neighbors])
    notes = [
        f"{n} articles, {int(degrees.sum()) // 2} undirected links, median degree "
        f"{int(np.median(degrees))}, {len(train)} official splits",
        f"{int((degrees == 0).sum())} articles without links",
    ]
    return GraphSet(
        data.x.numpy().astype(np.float32),
        labels,
        classes[:n_classes],
        neighbors,
        train,
        stopping,
        test,
        hash_files([root / RAW]),
        notes,
    )


def _check_links(edges: np.ndarray, n: int, path: Path) -> None:
    """Refuse a link to an index that is no article (PyG reads it into the graph as is).

    Raises:
        DataError: Naming the lowest article holding such a link and the index.
    """
    outside = (edges < 0) | (edges >= n)
    if not outside.any():
        return
    # read as undirected, a link is there both ways round: name the article that holds it
    held = outside[1] & ~outside[0]
    columns = np.flatnonzero(held) if held.any() else np.flatnonzero(outside.any(axis=0))
    column = columns[np.argmin(edges[0, columns])]
    node, index = int(edges[0, column]), int(edges[1, column])
    raise DataError(
        f"{path}: article {node} links to {index}, which is no article index (0..{n - 1}); "
        "fix its links, or download the file again."
    )


def fetch_wikics(target: Path) -> FetchRecord:
    """Download `raw/data.json` with PyG (from the dataset's GitHub repository) and hash it.

    Raises:
        FetchError: The download failed.
    """
    try:
        _wikics()(str(target), is_undirected=True)
    except Exception as err:  # urllib and PyG raise many kinds
        raise FetchError(
            f"Could not download Wiki-CS into {target}: {clause(err)}. Check the network, or "
            "pass --synthetic (data.synthetic=true) for the offline stand-in."
        ) from err
    files = hash_tree(target, [str(RAW)])
    record = FetchRecord("wikics", None, target, files, datetime.now(UTC).isoformat())
    write_manifest(record)
    return record


def write_wikics_standin(root: Path, nodes: int, seed: int, dim: int = 300) -> Path:
    """Write `raw/data.json` in the real format under `root`.

    A graph whose links mostly join articles of one class, features near their class's
    direction, and 20 splits in the released file's proportions (5 % training, 30 %
    stopping, 15 % validation per split; one test half, the same for every split).
    """
    rng = np.random.default_rng(seed)
    n_classes = len(CLASSES)
    labels = rng.integers(0, n_classes, size=nodes)
    centres = rng.normal(size=(n_classes, dim))
    # Weak alone (an article's words say a little about its branch); its links say more.
    features = STANDIN_SIGNAL * centres[labels] + rng.normal(size=(nodes, dim))
    links: list[list[int]] = [[] for _ in range(nodes)]
    for i in range(nodes):
        same = np.flatnonzero(labels == labels[i])
        k_same, k_other = rng.poisson(6), rng.poisson(3)
        picks = [*rng.choice(same, size=k_same), *rng.integers(0, nodes, size=k_other)]
        links[i] = sorted({int(j) for j in picks if j != i})
    test = np.zeros(nodes, dtype=bool)
    test[rng.permutation(nodes)[: nodes // 2]] = True
    rest = np.flatnonzero(~test)
    masks: dict[str, list[list[bool]]] = {"train_masks": [], "stopping_masks": [], "val_masks": []}
    for _ in range(20):
        shuffled = rng.permutation(rest)
        train, stopping = (round(nodes * share) for share in (0.05, 0.30))
        parts = np.split(shuffled, [train, train + stopping])  # the rest validates
        for key, part in zip(masks, parts, strict=True):
            mask = np.zeros(nodes, dtype=bool)
            mask[part] = True
            masks[key].append(mask.tolist())
    payload = {
        "features": np.round(features, 4).tolist(),
        "labels": labels.tolist(),
        "links": links,
        **masks,
        "test_mask": test.tolist(),
    }
    (root / "raw").mkdir(parents=True, exist_ok=True)
    (root / RAW).write_text(json.dumps(payload))
    return root
