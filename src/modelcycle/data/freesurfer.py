"""FreeSurfer 5.3 measure names → brain regions (graph nodes) with up to three measures each.

Cortical regions of the Desikan-Killiany atlas carry surface area, mean thickness and grey
matter volume; subcortical structures carry their volume. Measures that belong to no region
(whole-brain volumes, ventricles, corpus callosum, quality counts) are "global".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Slot of each measure kind in a node's feature vector.
MEASURE_SLOTS = {"surfarea": 0, "thickavg": 1, "gmvol": 2, "volume": 2}
N_SLOTS = 3

LOBES = {
    "frontal": (
        "superiorfrontal rostralmiddlefrontal caudalmiddlefrontal parsopercularis "
        "parstriangularis parsorbitalis lateralorbitofrontal medialorbitofrontal precentral "
        "paracentral frontalpole"
    ),
    "parietal": "superiorparietal inferiorparietal supramarginal postcentral precuneus",
    "temporal": (
        "superiortemporal middletemporal inferiortemporal bankssts fusiform "
        "transversetemporal entorhinal temporalpole parahippocampal"
    ),
    "occipital": "lateraloccipital lingual cuneus pericalcarine",
    "cingulate": (
        "rostralanteriorcingulate caudalanteriorcingulate posteriorcingulate isthmuscingulate"
    ),
    "insula": "insula",
}
LOBE_OF = {region: lobe for lobe, names in LOBES.items() for region in names.split()}
SUBCORTICAL = {"accumb", "amyg", "caud", "hippo", "pal", "put", "thal"}
SUBCORTICAL_LONG = {
    "Cerebellum_Cortex",
    "Cerebellum_White_Matter",
    "VentralDC",
    "Lateral_Ventricle",
    "Inf_Lat_Vent",
}

_CORTICAL = re.compile(r"^(?P<hemi>[LR])_(?P<region>[a-z]+)_(?P<kind>surfarea|thickavg|gmvol)$")
_SHORT = re.compile(r"^(?P<hemi>[LR])(?P<region>[a-z]+)$")
_LONG = re.compile(r"^(?P<hemi>Left|Right)_(?P<region>.+)$")


def region_of(name: str) -> tuple[str, str, int] | None:
    """(node name, lobe, feature slot) for a regional measure; None for a global one."""
    if m := _CORTICAL.match(name):
        region = m["region"]
        if region in LOBE_OF:
            return f"{m['hemi']}_{region}", LOBE_OF[region], MEASURE_SLOTS[m["kind"]]
    if (m := _SHORT.match(name)) and m["region"] in SUBCORTICAL:
        return f"{m['hemi']}_{m['region']}", "subcortical", MEASURE_SLOTS["volume"]
    if (m := _LONG.match(name)) and m["region"] in SUBCORTICAL_LONG:
        return f"{m['hemi'][0]}_{m['region']}", "subcortical", MEASURE_SLOTS["volume"]
    return None


@dataclass(frozen=True)
class RegionLayout:
    """Where each node's measures sit in a flat feature vector.

    Attributes:
        nodes: Node names, e.g. "L_precuneus".
        lobes: Lobe (or "subcortical") of each node.
        index: (n_nodes, N_SLOTS) column of each measure in the flat vector, -1 when absent.
        global_index: Columns that belong to no region.
    """

    nodes: tuple[str, ...]
    lobes: tuple[str, ...]
    index: np.ndarray
    global_index: np.ndarray

    @classmethod
    def from_names(cls, names: list[str]) -> RegionLayout:
        """Build the layout from the measure names of a FreeSurfer table."""
        slots: dict[str, dict[int, int]] = {}
        lobes: dict[str, str] = {}
        global_cols = []
        for col, name in enumerate(names):
            found = region_of(name)
            if found is None:
                global_cols.append(col)
                continue
            node, lobe, slot = found
            slots.setdefault(node, {})[slot] = col
            lobes[node] = lobe
        if not slots:
            raise ValueError(
                "No FreeSurfer regional measure among the features (expected names such as "
                "'L_precuneus_thickavg' or 'Lhippo'); the graph encoder needs them."
            )
        nodes = tuple(sorted(slots))
        index = np.full((len(nodes), N_SLOTS), -1, dtype=np.int64)
        for n, node in enumerate(nodes):
            for slot, col in slots[node].items():
                index[n, slot] = col
        return cls(nodes, tuple(lobes[n] for n in nodes), index, np.array(global_cols, int))

    def lobe_adjacency(self) -> np.ndarray:
        """Anatomical adjacency: same hemisphere and lobe, plus each node's homotopic twin."""
        hemi = np.array([n[0] for n in self.nodes])
        base = np.array([n[2:] for n in self.nodes])
        lobe = np.array(self.lobes)
        same_lobe = (hemi[:, None] == hemi[None, :]) & (lobe[:, None] == lobe[None, :])
        homotopic = base[:, None] == base[None, :]
        A = (same_lobe | homotopic).astype(np.float32)
        np.fill_diagonal(A, 0.0)
        return A

    def covariance_adjacency(self, X_train: np.ndarray, top_k: int) -> np.ndarray:
        """Structural covariance: |corr| between node means over training rows, top-k kept."""
        node_values = self.node_means(X_train)  # (n_subjects, n_nodes)
        with np.errstate(invalid="ignore", divide="ignore"):
            R = np.abs(np.corrcoef(node_values, rowvar=False))
        R = np.nan_to_num(R, nan=0.0)  # a node constant over training rows gets no edges
        np.fill_diagonal(R, 0.0)
        keep = np.zeros_like(R, dtype=bool)
        nearest = np.argsort(-R, axis=1)[:, :top_k]
        np.put_along_axis(keep, nearest, True, axis=1)
        keep |= keep.T  # symmetric
        return np.where(keep, R, 0.0).astype(np.float32)

    def node_means(self, X: np.ndarray) -> np.ndarray:
        """Mean of each node's available measures, shape (n_rows, n_nodes)."""
        padded = np.concatenate([X, np.zeros((len(X), 1))], axis=1)
        gathered = padded[:, self.index]  # (n_rows, n_nodes, N_SLOTS); -1 → zero column
        present = (self.index >= 0).sum(axis=1)
        return np.asarray(gathered.sum(axis=2) / present)
