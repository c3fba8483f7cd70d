"""Serving node classifiers: an article's ego graph in, its top-k classes out.

A request carries what the model sees of a node, so the server needs no copy of the graph:
`features`, the node's own feature vector first and then each linked article's, and
`links`, pairs of indices into `features` that are linked (the node to its neighbours, and
neighbours among themselves). A brand-new article is classified the same way as one of the
graph's: give its features, its neighbours' and their links.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from modelcycle.data.ego_graphs import ego_arrays
from modelcycle.serving.adapter import ClassifierAdapter, PlausibleRange, RequestError

#: Decimals the example requests keep of each feature (the JSON stays small).
EXAMPLE_DECIMALS = 4


FLOAT32_MAX = float(np.finfo(np.float32).max)


class NodeRequest(BaseModel):
    """One node as its ego graph: feature vectors (the node's first) and the links among them."""

    model_config = ConfigDict(extra="forbid")

    # strict: "1.5" and true are refused as the twins request refuses them, not read as numbers
    features: list[list[StrictFloat]] = Field(
        min_length=1,
        max_length=4097,  # a bound for the parser; the model's own (task.max_links + 1) is
        # checked in `decode`, with a message that says it, and is the schema's maxItems
        description="The node's feature vector, then one per linked node",
    )

    @field_validator("features", mode="before")
    @classmethod
    def _vectors(cls, value: Any) -> Any:
        """One vector alone got pydantic's "valid list" once per number."""
        numbers = (
            isinstance(value, list)
            and value
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        )
        if numbers:
            raise ValueError(
                f"features is a list of vectors, the node's first: send one vector of "
                f"{len(value)} numbers as [[...]], inside another list"
            )
        return value

    # strict too: true, "1" and 1.0 were read as the index 1
    links: list[tuple[StrictInt, StrictInt]] = Field(
        default_factory=list,
        max_length=10_000,
        description=(
            "Pairs of indices into `features` that are linked (row 0: the node); every "
            "neighbour is linked to the node, [0, i], and may be to other neighbours"
        ),
    )


class NodeServing(ClassifierAdapter):
    """Adapter of the node task; `info` holds `classes`, `feature_dim`, `max_links`, `top_k`.

    Robustness shifts: noise added to every feature (`size` times each feature's spread over
    the rows) and links dropped (a share `size` of the node's links to its neighbours, with
    the neighbours they leave alone); the held-out metric is top-1 accuracy.
    """

    request_type = NodeRequest
    shift_sizes: ClassVar[dict[str, tuple[float, ...]]] = {
        "noise": (0.25, 0.5, 1.0),
        "drop links": (0.25, 0.5, 0.9),
    }

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info)
        self.dim = int(info["feature_dim"])
        self.max_links = int(info["max_links"])
        spread = info.get("feature_mean"), info.get("feature_sd")  # absent from older models
        self._plausible = None if None in spread else PlausibleRange(*spread)

    def request_schema(self, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
        """`NodeRequest`'s schema, at most `max_links` + 1 vectors: this model's limit."""
        schema = super().request_schema(ref_template)
        schema["properties"]["features"]["maxItems"] = self.max_links + 1
        return schema

    def decode(self, request: BaseModel) -> list[np.ndarray]:
        """The ego graph as padded arrays: [(1, K+1, d) features, (1, K+1, K+1) links, mask]."""
        assert isinstance(request, NodeRequest)
        rows = request.features
        if len(rows) > self.max_links + 1:
            raise RequestError(
                f"features: {len(rows)} vectors, but this model takes the node and at most "
                f"{self.max_links} linked nodes ({self.max_links + 1}); send fewer neighbours "
                f"(training kept a random {self.max_links} of an article's links when it had "
                "more: send such a draw)."
            )
        wrong = [i for i, row in enumerate(rows) if len(row) != self.dim]
        if wrong:
            raise RequestError(
                f"features[{wrong[0]}]: {len(rows[wrong[0]])} numbers; every vector has {self.dim}."
            )
        wide = np.asarray(rows, dtype=np.float64)
        if not np.isfinite(wide).all():
            raise RequestError("features: NaN or infinite values; send finite numbers.")
        if (np.abs(wide) > FLOAT32_MAX).any():
            raise RequestError(
                f"features: values beyond ±{FLOAT32_MAX:.3g}, the largest the model's 32-bit "
                "numbers hold; send smaller numbers."
            )
        features = wide.astype(np.float32)
        self._check_plausible(features)
        for pair in request.links:
            if not all(0 <= k < len(rows) for k in pair):
                raise RequestError(
                    f"links: {list(pair)} names a vector that does not exist; indices go from 0 "
                    f"to {len(rows) - 1}."
                )
        _every_neighbour_linked(request.links, len(rows))
        x, adj, mask = ego_arrays(features, request.links, self.max_links)
        return [x[None], adj[None], mask[None]]

    def _check_plausible(self, features: np.ndarray) -> None:
        """Refuse a feature beyond `OUTLIER_SD` training standard deviations.

        Features of 1e6 were answered with confidence 1.0: vectors of another embedding or
        scale must not get a confident class.
        """
        if self._plausible is not None:
            dataset = self.info.get("dataset", "its dataset")
            self._plausible.refuse_outside(
                features,
                lambda at: f"features[{at[0]}][{at[1]}]",
                "articles'",
                f"no article was seen: send the vectors the model was trained on ({dataset}'s "
                "features, unscaled).",
            )

    def shift(
        self, inputs: list[np.ndarray], kind: str, size: float, seed: int
    ) -> list[np.ndarray]:
        """Copies of the ego-graph arrays with feature noise or a share of links dropped."""
        self.check_shift(kind)
        rng = np.random.default_rng(seed)
        x, adj, mask = (np.array(a, copy=True) for a in inputs)
        if kind == "noise":
            present = mask > 0
            spread = x[present].std(axis=0)
            x[present] += (size * spread * rng.standard_normal(x[present].shape)).astype(x.dtype)
            return [x, adj, mask]
        for n in range(len(x)):  # "drop links": the centre's links, and the neighbours with them
            linked = np.flatnonzero(adj[n, 0])
            dropped = linked[rng.random(len(linked)) < size]
            adj[n, dropped, :] = adj[n, :, dropped] = 0
            x[n, dropped] = 0
            mask[n, dropped] = 0
        return [x, adj, mask]

    def drift_features(self, inputs: list[np.ndarray]) -> dict[str, float]:
        """The node's neighbours and links, and the mean and spread of its features."""
        x, adj, mask = (a[0] for a in inputs)
        return {
            "neighbours": float(mask.sum() - 1),
            "links_among": float(adj.sum() / 2),
            "feature_mean": float(x[0].mean()),
            "feature_spread": float(x[0].std()),
        }

    def examples(
        self, held_out: list[np.ndarray], target: np.ndarray | None
    ) -> list[dict[str, Any]]:
        """Held-out nodes' ego graphs as requests, labelled with their classes."""
        x, adj, mask = held_out
        labels = self.info.get("held_out_labels") or [""] * len(x)
        examples = []
        for n, label in zip(range(min(6, len(x))), labels, strict=False):
            m = int(mask[n].sum())
            linked = np.nonzero(np.triu(adj[n][:m, :m]))
            pairs = [(int(i), int(j)) for i, j in zip(*linked, strict=True)]
            examples.append(
                {
                    "id": f"example-{n + 1}",
                    "label": f"{label}, {m - 1} linked articles (held out)",
                    "request": {
                        # float64 first: float32 0.0768 prints as 0.07680000364780426
                        "features": np.round(
                            x[n][:m].astype(np.float64), EXAMPLE_DECIMALS
                        ).tolist(),
                        "links": pairs,
                    },
                }
            )
        return examples


def _every_neighbour_linked(links: list[tuple[int, int]], vectors: int) -> None:
    """Refuse a neighbour's vector with no link to the node (row 0).

    An ego graph holds the node's linked articles, and the model reads a vector only
    through its links: one sent without `[0, i]` (forgotten `links`, or only the links
    among neighbours) changed nothing, and the answer was the lone article's.
    """
    linked = {j for i, j in links if i == 0} | {i for i, j in links if j == 0}
    alone = [k for k in range(1, vectors) if k not in linked]
    if alone:
        more = f" (and {len(alone) - 1} more)" if len(alone) > 1 else ""
        raise RequestError(
            f"features[{alone[0]}]{more} is not linked to the node, features[0]: an ego "
            "graph holds the node's linked articles, and the model reads a vector only "
            f"through its links; add [0, {alone[0]}] to links, or leave the vector out."
        )
