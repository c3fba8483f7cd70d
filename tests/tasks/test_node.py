"""The node task: ego graphs, the official splits, the baseline, the adapter's requests."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from modelcycle.config import ConfigError, assemble, compose_config
from modelcycle.data.ego_graphs import ego_graphs, ego_members
from modelcycle.data.tables import DataError
from modelcycle.data.wikics import GraphSet, WikiCSSource, write_wikics_standin
from modelcycle.evaluation.classification import score_classifier
from modelcycle.models.ego_gnn import EgoGNN
from modelcycle.serving.adapter import RequestError
from modelcycle.tasks.node import NodeTask, label_propagation
from modelcycle.tasks.node_serving import NodeRequest, NodeServing


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> GraphSet:
    root = write_wikics_standin(tmp_path_factory.mktemp("wikics"), nodes=600, seed=2)
    return WikiCSSource(root=root).load()


def task(max_links: int = 8) -> NodeTask:
    return NodeTask(WikiCSSource(), partial(EgoGNN, hidden=8), max_links=max_links)


def test_an_ego_graph_holds_the_node_its_links_and_the_links_among_them(graph: GraphSet) -> None:
    node = next(i for i, n in enumerate(graph.neighbors) if 3 <= len(n) <= 8)
    x, adj, mask = (a[0] for a in ego_graphs(graph.features, graph.neighbors, np.array([node]), 8))
    members = [node, *graph.neighbors[node].tolist()]
    assert mask.sum() == len(members) and (mask[len(members) :] == 0).all()
    assert (
        np.array_equal(x[: len(members)], graph.features[members]) and not x[len(members) :].any()
    )
    assert (adj == adj.T).all() and not np.diag(adj).any()
    assert adj[0, 1 : len(members)].all()  # the node is linked to each neighbour
    for a in range(1, len(members)):
        for b in range(1, len(members)):
            linked = members[b] in graph.neighbors[members[a]]
            assert adj[a, b] == float(linked and a != b)


def test_a_node_with_more_links_keeps_the_same_seeded_draw(graph: GraphSet) -> None:
    node = int(np.argmax([len(n) for n in graph.neighbors]))
    assert len(graph.neighbors[node]) > 4
    first = ego_members(graph.neighbors, node, 4, seed=0)
    assert first == ego_members(graph.neighbors, node, 4, seed=0) and len(first) == 5
    assert set(first[1:]) <= set(graph.neighbors[node].tolist())
    others = {tuple(ego_members(graph.neighbors, node, 4, seed=s)) for s in range(5)}
    assert len(others) > 1


def test_folds_are_the_official_splits_and_more_are_refused(graph: GraphSet) -> None:
    folds = task().folds(graph, 3, seed=0)
    for k, fold in enumerate(folds):
        assert np.array_equal(fold.train, np.flatnonzero(graph.train_masks[k]))
        assert np.array_equal(fold.val, np.flatnonzero(graph.stopping_masks[k]))
        assert np.array_equal(fold.test, np.flatnonzero(graph.test_mask))
    with pytest.raises(DataError, match=r"cv.n_folds=21: .* has 20 official splits"):
        task().folds(graph, 21, seed=0)
    final = task().final_fold(graph, seed=0)
    assert not set(final.train) & set(final.val) and len(final.train) + len(final.val) == 600


def test_the_drift_reference_takes_nodes_the_model_never_trained_on(graph: GraphSet) -> None:
    # It drew training nodes, on which a model is surer: unseen articles read as drift
    node_task = task()
    fold = node_task.final_fold(graph, 0)
    servable = node_task.servable(node_task.model(graph, fold), graph, fold)
    assert servable.reference is not None
    features = servable.reference[0][:, 0]  # each ego graph's own article
    unseen = servable.reference_unseen
    held_out = len(servable.held_out[0])
    assert unseen == min(node_task.reference_rows, len(fold.val) - held_out) < len(features)

    def rows_of(vectors: np.ndarray) -> set[int]:
        return {int(np.flatnonzero((graph.features == v).all(axis=1))[0]) for v in vectors}

    # the stopping nodes but the held-out ones first (too few here: training nodes after)
    held = rows_of(servable.held_out[0][:, 0])
    assert rows_of(features[:unseen]) == set(fold.val.tolist()) - held
    assert rows_of(features[unseen:]) <= set(fold.train.tolist())


def test_label_propagation_beats_the_majority_class(graph: GraphSet) -> None:
    fold = task().folds(graph, 1, seed=0)[0]
    scores = label_propagation(graph, fold.train, layers=10, alpha=0.9)
    assert scores.shape == (600, 10) and np.allclose(scores.sum(axis=1), 1)
    accuracy = score_classifier(scores[fold.test], graph.labels[fold.test], graph.classes)
    majority = np.bincount(graph.labels[fold.test]).max() / len(fold.test)
    assert accuracy.metrics["accuracy"] > majority + 0.2


def test_a_request_decodes_to_the_arrays_the_model_was_trained_on(graph: GraphSet) -> None:
    rows = np.array([5, 17, 42])
    arrays = ego_graphs(graph.features, graph.neighbors, rows, 8)
    adapter = NodeServing(
        {"classes": graph.classes, "feature_dim": 300, "max_links": 8, "held_out_labels": ["a"] * 3}
    )
    for n, example in enumerate(adapter.examples(list(arrays), None)):
        decoded = adapter.decode(NodeRequest.model_validate(example["request"]))
        assert np.allclose(decoded[0][0], arrays[0][n], atol=1e-4)  # features kept to 4 decimals
        written = [repr(v) for row in example["request"]["features"] for v in row]
        assert max(len(text.lstrip("-")) for text in written) <= len("0.0000") + 2  # e.g. 12.3456
        assert np.array_equal(decoded[1][0], arrays[1][n]) and np.array_equal(
            decoded[2][0], arrays[2][n]
        )
        features = adapter.drift_features(decoded)
        assert features["neighbours"] == arrays[2][n].sum() - 1
        assert features["links_among"] == arrays[1][n].sum() / 2


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"features": [[0.0] * 3]}, r"features\[0\]: 3 numbers; every vector has 300"),
        (
            {"features": [[0.0] * 300] * 10},
            r"10 vectors, but this model takes the node and at most 8",
        ),
        (
            {"features": [[0.0] * 300] * 2, "links": [[0, 2]]},
            r"links: \[0, 2\] names a vector that does not exist; indices go from 0 to 1",
        ),
        ({"features": [[0.0] * 300] * 3}, r"features\[1\] \(and 1 more\) is not linked to"),
        (
            {"features": [[0.0] * 300] * 3, "links": [[1, 2], [2, 0]]},
            r"features\[1\] is not linked to the node, features\[0\].*add \[0, 1\] to links",
        ),
        ({"features": [[float("nan")] * 300]}, r"NaN or infinite values"),
        # finite in JSON, too large for the model's float32: not called NaN or infinite
        ({"features": [[1e300] + [0.0] * 299]}, r"values beyond ±3.4e\+38, the largest"),
    ],
)
def test_bad_requests_say_what_is_wrong(request_body: dict[str, object], message: str) -> None:
    adapter = NodeServing({"classes": ["a", "b"], "feature_dim": 300, "max_links": 8})
    with pytest.raises(RequestError, match=message):
        adapter.decode(NodeRequest.model_validate(request_body))


def test_features_far_beyond_the_training_articles_are_refused(graph: GraphSet) -> None:
    # 1e6 in every feature was answered "Internet protocols" with confidence 1.0
    node_task = task()
    fold = node_task.final_fold(graph, 0)
    info = node_task.servable(node_task.model(graph, fold), graph, fold).info
    assert len(info["feature_mean"]) == len(info["feature_sd"]) == 300
    adapter = NodeServing({**info, "dataset": "wikics"})
    real = graph.features[:9].astype(np.float64)  # the real articles pass
    links = [[0, k] for k in range(1, 9)]
    assert adapter.decode(NodeRequest.model_validate({"features": real.tolist(), "links": links}))
    scaled = real.copy()
    scaled[3, 17] = 1e6
    with pytest.raises(RequestError, match=r"features\[3\]\[17\]=1e\+06 lies [\d.e+]+ standard "):
        adapter.decode(NodeRequest.model_validate({"features": scaled.tolist(), "links": links}))
    with pytest.raises(RequestError, match=r"\(and \d+ more\); beyond 50 no article was seen"):
        body = {"features": (real * 1000).tolist(), "links": links}
        adapter.decode(NodeRequest.model_validate(body))
    # a model saved without the spread checks nothing of it
    kept = {k: v for k, v in info.items() if k not in ("feature_mean", "feature_sd")}
    older = NodeServing(kept)
    assert older.decode(NodeRequest.model_validate({"features": scaled.tolist(), "links": links}))


@pytest.mark.parametrize("index", [True, "1", 1.0, 1.5])
def test_a_link_index_that_is_not_a_whole_number_is_refused(index: object) -> None:
    body = {"features": [[0.0] * 300] * 2, "links": [[0, index]]}
    with pytest.raises(ValidationError):  # true, "1" and 1.0 were read as 1
        NodeRequest.model_validate(body)
    with pytest.raises(ValidationError):
        NodeRequest.model_validate_json(json.dumps(body))  # the server's own parse
    assert NodeRequest.model_validate({**body, "links": [[0, 1]]}).links == [(0, 1)]


@pytest.mark.parametrize("value", ["1.5", True])
def test_a_feature_that_is_not_a_number_is_refused(value: object) -> None:
    with pytest.raises(ValidationError):  # it was read as 1.5 or 1.0
        NodeRequest.model_validate({"features": [[value] + [0.0] * 299]})
    assert NodeRequest.model_validate({"features": [[1] + [0.0] * 299]}).features[0][0] == 1.0


def test_one_vector_not_wrapped_in_a_list_is_named_once() -> None:
    # a flat list got pydantic's "Input should be a valid list" once per number (20 shown)
    for parse in (NodeRequest.model_validate, lambda b: NodeRequest.model_validate_json(
            json.dumps(b))):  # fmt: skip
        with pytest.raises(ValidationError) as refused:
            parse({"features": [0.5] * 300})
        errors = refused.value.errors()
        assert len(errors) == 1 and errors[0]["loc"] == ("features",)
        assert "send one vector of 300 numbers as [[...]]" in errors[0]["msg"]
    assert NodeRequest.model_validate({"features": [[0.5] * 300]}).features[0][0] == 0.5


def test_the_request_schema_states_this_model_s_limit() -> None:
    adapter = NodeServing({"classes": ["a", "b"], "feature_dim": 300, "max_links": 8})
    assert adapter.request_schema()["properties"]["features"]["maxItems"] == 9
    generic = NodeRequest.model_json_schema()["properties"]["features"]["maxItems"]
    assert generic > 9  # the type's own bound is only the parser's


def test_the_experiment_composes_and_refuses_what_it_cannot_build(workspace: Path) -> None:
    assembled = assemble(compose_config(["experiment=node_wikics"]))
    node_task = assembled.task
    assert isinstance(node_task, NodeTask) and isinstance(node_task.source, WikiCSSource)
    assert node_task.model_name == "node_wikics" and assembled.pipeline.n_folds == 5
    refused = {
        "model.name=gin": r"model.name='gin': give one of gcn, sage, gat",
        "model.layers=0": r"model.layers=0: give a value from 1 to below 5",
        "task.max_links=0": r"max_links=0: give a whole number >= 1",
        "task.propagation_alpha=1": r"propagation_alpha=1",
        # heads changed nothing but gat's attention, silently (sweeps over it included)
        "model.heads=8": r"model.heads=8: attention heads are gat's alone, and name=gcn",
    }
    for override, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            assemble(compose_config(["experiment=node_wikics", override]))
    assemble(compose_config(["experiment=node_wikics", "model.name=gat", "model.heads=2"]))


@pytest.mark.parametrize("name", ["gcn", "sage", "gat"])
def test_each_network_exports_to_onnx_with_parity(
    name: str, graph: GraphSet, tmp_path: Path
) -> None:
    import torch

    from modelcycle.export import check_parity, export_onnx
    from modelcycle.models.ego_gnn import EgoClassifier, NodeClassifier

    torch.manual_seed(0)
    network = EgoGNN(300, 10, name=name, hidden=8, heads=2 if name == "gat" else None)
    module = EgoClassifier(NodeClassifier(network)).eval()
    arrays = ego_graphs(graph.features, graph.neighbors, np.arange(6), 8)
    path = export_onnx(
        module,
        tuple(torch.from_numpy(a[:2]) for a in arrays),
        ["features", "links", "mask"],
        ["confidence", "probabilities", "embedding"],
        tmp_path / "model.onnx",
    )
    parity = check_parity(module, path, list(arrays))
    assert parity.passed, parity


def test_robustness_shifts_add_noise_or_drop_links_and_nothing_else(graph: GraphSet) -> None:
    adapter = NodeServing({"classes": graph.classes, "feature_dim": 300, "max_links": 8})
    arrays = list(ego_graphs(graph.features, graph.neighbors, np.arange(20), 8))
    x, adj, mask = adapter.shift(arrays, "noise", 0.5, seed=0)
    assert not np.array_equal(x, arrays[0]) and not x[arrays[2] == 0].any()  # padding stays 0
    assert np.array_equal(adj, arrays[1]) and np.array_equal(mask, arrays[2])
    x, adj, mask = adapter.shift(arrays, "drop links", 1.0, seed=0)
    assert (mask.sum(axis=1) == 1).all() and not adj.any()  # only the centres are left
    assert np.array_equal(x[:, 0], arrays[0][:, 0]) and not x[:, 1:].any()
    unchanged = adapter.shift(arrays, "drop links", 0.0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(unchanged, arrays, strict=True))
    with pytest.raises(ValueError, match=r"unknown shift 'blur'; choose from noise, drop links"):
        adapter.shift(arrays, "blur", 1.0, seed=0)
