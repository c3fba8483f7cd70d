"""FreeSurfer measure names → regions, the region layout and its adjacency matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelcycle.data.freesurfer import N_SLOTS, RegionLayout, region_of


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("L_precuneus_thickavg", ("L_precuneus", "parietal", 1)),
        ("L_precuneus_surfarea", ("L_precuneus", "parietal", 0)),
        ("R_superiorfrontal_gmvol", ("R_superiorfrontal", "frontal", 2)),
        ("R_insula_thickavg", ("R_insula", "insula", 1)),
        ("L_isthmuscingulate_surfarea", ("L_isthmuscingulate", "cingulate", 0)),
        ("R_pericalcarine_gmvol", ("R_pericalcarine", "occipital", 2)),
        ("L_entorhinal_thickavg", ("L_entorhinal", "temporal", 1)),
        ("Rhippo", ("R_hippo", "subcortical", 2)),
        ("Lthal", ("L_thal", "subcortical", 2)),
        ("Left_VentralDC", ("L_VentralDC", "subcortical", 2)),
        ("Right_Cerebellum_White_Matter", ("R_Cerebellum_White_Matter", "subcortical", 2)),
        ("Right_Inf_Lat_Vent", ("R_Inf_Lat_Vent", "subcortical", 2)),
    ],
)
def test_region_of_regional_measures(name: str, expected: tuple[str, str, int]) -> None:
    assert region_of(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "EstimatedTotalIntraCranialVol",
        "CSF",
        "X3rd_Ventricle",
        "CC_Anterior",
        "LThickness",
        "LSurfArea",
        "lhCortexVol",
        "lhSurfaceHoles",
        "Left_choroid_plexus",
        "Right_WM_hypointensities",
        "L_notaregion_thickavg",  # cortical pattern, but not a Desikan-Killiany region
        "L_precuneus_meancurv",  # a region, but not one of the three measures
        "Lhippocampus",  # not a known subcortical short name
        "AvgThickness",
    ],
)
def test_region_of_global_measures(name: str) -> None:
    assert region_of(name) is None


NAMES = [
    "EstimatedTotalIntraCranialVol",  # 0 global
    "L_precuneus_thickavg",  # 1
    "Lhippo",  # 2
    "L_precuneus_surfarea",  # 3
    "R_precuneus_gmvol",  # 4
    "CSF",  # 5 global
]


def test_layout_from_names_indexes_each_slot_and_marks_absent_ones() -> None:
    layout = RegionLayout.from_names(NAMES)
    assert layout.nodes == ("L_hippo", "L_precuneus", "R_precuneus")
    assert layout.lobes == ("subcortical", "parietal", "parietal")
    assert layout.index.shape == (3, N_SLOTS)
    np.testing.assert_array_equal(layout.index, [[-1, -1, 2], [3, 1, -1], [-1, -1, 4]])
    np.testing.assert_array_equal(layout.global_index, [0, 5])


def test_layout_without_regional_measures_raises() -> None:
    with pytest.raises(ValueError, match="No FreeSurfer regional measure"):
        RegionLayout.from_names(["EstimatedTotalIntraCranialVol", "CSF"])


def test_node_means_ignore_absent_slots() -> None:
    layout = RegionLayout.from_names(NAMES)
    X = np.array(
        [
            [1500.0, 2.0, 4.0, 6.0, 10.0, 900.0],
            [1600.0, 3.0, -1.0, 1.0, 7.0, 800.0],
        ]
    )
    # L_hippo: its volume; L_precuneus: (surfarea + thickavg) / 2; R_precuneus: its volume.
    np.testing.assert_allclose(layout.node_means(X), [[4.0, 4.0, 10.0], [-1.0, 2.0, 7.0]])


LOBE_NAMES = [
    "L_cuneus_thickavg",
    "R_cuneus_thickavg",
    "L_precuneus_thickavg",
    "R_precuneus_thickavg",
    "L_superiorparietal_thickavg",  # no right-hand partner
    "Lhippo",
    "Rhippo",
    "Lamyg",
    "ETIV",
]


def test_lobe_adjacency_known_edges() -> None:
    layout = RegionLayout.from_names(LOBE_NAMES)
    nodes = list(layout.nodes)
    assert nodes == [
        "L_amyg",
        "L_cuneus",
        "L_hippo",
        "L_precuneus",
        "L_superiorparietal",
        "R_cuneus",
        "R_hippo",
        "R_precuneus",
    ]
    edges = {
        ("L_amyg", "L_hippo"),  # same hemisphere, both subcortical
        ("L_precuneus", "L_superiorparietal"),  # same hemisphere, both parietal
        ("L_cuneus", "R_cuneus"),  # homotopic
        ("L_hippo", "R_hippo"),  # homotopic
        ("L_precuneus", "R_precuneus"),  # homotopic
    }
    expected = np.zeros((len(nodes), len(nodes)), dtype=np.float32)
    for a, b in edges:
        expected[nodes.index(a), nodes.index(b)] = expected[nodes.index(b), nodes.index(a)] = 1
    A = layout.lobe_adjacency()
    np.testing.assert_array_equal(A, expected)
    # spelled out: different lobes in one hemisphere are not connected; nor across hemispheres
    assert A[nodes.index("L_cuneus"), nodes.index("L_precuneus")] == 0
    assert A[nodes.index("L_superiorparietal"), nodes.index("R_precuneus")] == 0
    assert A[nodes.index("L_hippo"), nodes.index("R_precuneus")] == 0


def test_lobe_adjacency_is_symmetric_with_zero_diagonal() -> None:
    layout = RegionLayout.from_names(LOBE_NAMES)
    A = layout.lobe_adjacency()
    np.testing.assert_array_equal(A, A.T)
    assert (np.diag(A) == 0).all()


def test_covariance_adjacency_links_correlated_nodes() -> None:
    rng = np.random.default_rng(0)
    z, w = rng.normal(size=50), rng.normal(size=50)
    layout = RegionLayout.from_names(["Lhippo", "Rhippo", "Lamyg", "Ramyg"])
    # nodes sorted: L_amyg, L_hippo, R_amyg, R_hippo
    X = np.column_stack(
        [z, z + 0.1 * rng.normal(size=50), w, -w + 0.1 * rng.normal(size=50)]
    )  # Lhippo ~ Rhippo; Lamyg ~ -Ramyg
    A = layout.covariance_adjacency(X, top_k=1)
    r_hippo = abs(np.corrcoef(X[:, 0], X[:, 1])[0, 1])
    r_amyg = abs(np.corrcoef(X[:, 2], X[:, 3])[0, 1])
    expected = np.zeros((4, 4))
    expected[0, 2] = expected[2, 0] = r_amyg  # |r| even though r < 0
    expected[1, 3] = expected[3, 1] = r_hippo
    np.testing.assert_allclose(A, expected, rtol=1e-6)


def test_constant_node_gets_no_edges_instead_of_nan() -> None:
    rng = np.random.default_rng(2)
    layout = RegionLayout.from_names(["Lhippo", "Rhippo", "Lamyg", "Ramyg"])
    X = rng.normal(size=(30, 4))
    X[:, 0] = 7.0  # Lhippo constant over the training rows
    A = layout.covariance_adjacency(X, top_k=2)
    assert np.isfinite(A).all()
    lhippo = layout.nodes.index("L_hippo")
    assert (A[lhippo] == 0).all() and (A[:, lhippo] == 0).all()
    assert (A > 0).any()


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_covariance_adjacency_is_symmetric_with_top_k_neighbours(top_k: int) -> None:
    rng = np.random.default_rng(1)
    names = [f"{h}_{r}_thickavg" for h in "LR" for r in ("precuneus", "cuneus", "insula")]
    layout = RegionLayout.from_names(names)
    X = rng.normal(size=(12, len(names)))
    A = layout.covariance_adjacency(X, top_k=top_k)
    np.testing.assert_array_equal(A, A.T)
    assert (np.diag(A) == 0).all()
    assert ((A > 0).sum(axis=1) >= top_k).all()
    # kept weights are |Pearson r| of the node means
    R = np.abs(np.corrcoef(layout.node_means(X), rowvar=False))
    kept = A > 0
    np.testing.assert_allclose(A[kept], R[kept], rtol=1e-6)
    # each node keeps its strongest partner
    np.fill_diagonal(R, -1)
    strongest = R.argmax(axis=1)
    assert (A[np.arange(len(A)), strongest] > 0).all()


def test_real_freesurfer_header_layout(real_qtim: Path) -> None:
    table = real_qtim / "derivatives" / "freesurfer_5.3" / "fs5.3_ses-01.tsv"
    names = [c for c in pd.read_csv(table, sep="\t", nrows=0).columns if c != "participant_id"]
    layout = RegionLayout.from_names(names)
    lobes = np.array(layout.lobes)
    cortical = lobes != "subcortical"
    assert cortical.sum() == 68  # Desikan-Killiany: 34 regions per hemisphere
    assert (layout.index[cortical] >= 0).all()  # surfarea, thickavg and gmvol each
    subcortical = ~cortical
    assert subcortical.sum() >= 14
    assert (layout.index[subcortical][:, :2] == -1).all()
    assert (layout.index[subcortical][:, 2] >= 0).all()
    assert "EstimatedTotalIntraCranialVol" in [names[i] for i in layout.global_index]
    # every column is placed exactly once: in a node slot or among the globals
    placed = np.r_[layout.index[layout.index >= 0], layout.global_index]
    assert sorted(placed.tolist()) == list(range(len(names)))
