"""Ego graphs: an article, up to `max_links` of its linked articles, and the links among them.

A node classifier here sees a node through its ego graph, in fixed-size dense arrays: row 0
is the node itself, rows 1..m its neighbours, the rest padding (mask 0). Training, scoring
and serving build the same arrays, so a served request (an article's features, its
neighbours' and their links) is what the model was trained on, and the server needs no copy
of the graph. numpy only: the server imports this.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ego_arrays(
    features: np.ndarray, links: Sequence[tuple[int, int]], max_links: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ego graph as (max_links + 1, d) features, a symmetric 0/1 adjacency and a mask.

    Args:
        features: (m, d) features, row 0 the centre, 1 <= m <= max_links + 1.
        links: Pairs of row indices that are linked (either order; self-links ignored).
        max_links: Neighbours the arrays hold.
    """
    size = max_links + 1
    x = np.zeros((size, features.shape[1]), dtype=np.float32)
    x[: len(features)] = features
    adj = np.zeros((size, size), dtype=np.float32)
    for i, j in links:
        if i != j:
            adj[i, j] = adj[j, i] = 1.0
    mask = np.zeros(size, dtype=np.float32)
    mask[: len(features)] = 1.0
    return x, adj, mask


def ego_graphs(
    features: np.ndarray,
    neighbors: list[np.ndarray],
    rows: np.ndarray,
    max_links: int,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ego graphs of `rows`: (b, K+1, d) features, (b, K+1, K+1) adjacency, (b, K+1) mask.

    A node with more than `max_links` neighbours keeps a draw of them that depends only on
    the node and `seed`, so the same node always gets the same ego graph.
    """
    size = max_links + 1
    x = np.zeros((len(rows), size, features.shape[1]), dtype=np.float32)
    adj = np.zeros((len(rows), size, size), dtype=np.float32)
    mask = np.zeros((len(rows), size), dtype=np.float32)
    for b, node in enumerate(rows):
        members = ego_members(neighbors, int(node), max_links, seed)
        position = {int(m): k for k, m in enumerate(members)}
        links = [
            (k, position[int(u)])
            for k, m in enumerate(members)
            for u in neighbors[m]
            if int(u) in position
        ]
        x[b], adj[b], mask[b] = ego_arrays(features[members], links, max_links)
    return x, adj, mask


def ego_members(neighbors: list[np.ndarray], node: int, max_links: int, seed: int) -> list[int]:
    """The node, then up to `max_links` of its neighbours (a seeded draw when it has more)."""
    around = neighbors[node]
    if len(around) > max_links:
        rng = np.random.default_rng([seed, node])
        around = np.sort(rng.choice(around, size=max_links, replace=False))
    return [node, *(int(u) for u in around)]
