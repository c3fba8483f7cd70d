"""The model server through TestClient: every route and error path, on real ONNX Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gzip
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelcycle.digests import sha256_file
from modelcycle.monitoring.capture import CaptureStore
from modelcycle.serving.app import DOCS_ASSETS, ServeSettings, create_app
from modelcycle.serving.loading import ModelLoadError, ServedModel, load_served
from modelcycle.serving.loop_lag import LoopLag, RecentTime
from modelcycle.tracking import git_state
from server_process import free_port
from serving_fixtures import ServedWorkspace

PREDICT = "/v1/models/twins/predict"
OPERATION = "/v1/models/{name}/predict"
PREDICT_SERIES = 'modelcycle_requests_total{model="twins",route="/v1/models/{name}/predict"'
JSON_TYPE = {"content-type": "application/json"}
KEY = "s3cret-serving-key"  # MIN_KEY_LENGTH characters at least


def _client(
    served: ServedModel, settings: ServeSettings, capture: CaptureStore | None = None
) -> TestClient:
    return TestClient(create_app(lambda: [served], settings, capture))


@pytest.fixture
def client(served: ServedModel, tmp_path: Path) -> Iterator[TestClient]:
    with _client(served, ServeSettings(), CaptureStore(tmp_path / "capture.db")) as c:
        yield c


def _example(
    client: TestClient, n: int = 0, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    examples = client.get("/v1/models/twins/examples", headers=headers).json()["examples"]
    return dict(examples[n]["request"])


def _post(
    client: TestClient, body: Any, headers: dict[str, str] | None = None, **kwargs: Any
) -> Any:
    headers = {"content-type": "application/json", **(headers or {})}
    return client.post(PREDICT, content=json.dumps(body), headers=headers, **kwargs)


def test_predict_matches_onnx_runtime_and_names_the_version(
    client: TestClient, served: ServedModel
) -> None:
    request = _example(client)
    response = _post(client, request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "twins" and body["version"] == "1"
    rows = served.adapter.decode(served.adapter.request_type.model_validate(request))
    probability, similarity, distance = served.run(rows)
    assert body["outputs"]["probability"] == pytest.approx(float(probability[0]), abs=1e-6)
    assert body["outputs"]["similarity"] == pytest.approx(float(similarity[0]), abs=1e-6)
    assert 0 < body["outputs"]["probability"] < 1
    # the embedding's distance from the reference is for monitoring: recorded, never answered
    assert served.output_names[2] == "embedding_distance" and distance.shape == (1,)
    assert set(body["outputs"]) == {"probability", "similarity"}


def test_examples_hold_twin_and_unrelated_pairs_with_known_labels(client: TestClient) -> None:
    examples = client.get("/v1/models/twins/examples").json()["examples"]
    labels = [e["label"] for e in examples]
    assert labels.count("twin-like pair (held out)") == 2
    assert labels.count("unrelated pair (held out)") == 2


def test_examples_describe_each_person_so_two_can_be_picked_apart(client: TestClient) -> None:
    (model,) = client.get("/v1/models").json()["models"]
    assert model["request_parts"] == ["a", "b"]
    examples = client.get("/v1/models/twins/examples").json()["examples"]
    for example in examples:
        for part in ("a", "b"):
            person = example["request"][part]
            assert example["parts"][part] == f"{person['sex']}, {person['age']:.0f} y"
    # a of one pair with b of another is a request the model answers
    mixed = {"a": examples[0]["request"]["a"], "b": examples[-1]["request"]["b"]}
    assert _post(client, mixed).status_code == 200


def test_missing_measures_are_imputed_up_to_the_limit(client: TestClient) -> None:
    request = _example(client)
    names = list(request["a"]["measures"])
    request["a"]["measures"][names[0]] = None
    del request["a"]["measures"][names[1]]
    assert _post(client, request).status_code == 200
    for name in names[: len(names) // 2]:
        request["a"]["measures"][name] = None
    response = _post(client, request)
    assert response.status_code == 422 and "at most 20% can be imputed" in response.json()["detail"]


def test_an_unknown_measure_is_named_with_where_all_names_are(client: TestClient) -> None:
    request = _example(client)
    request["b"]["measures"]["lh_nowhere_thickness"] = 2.5
    detail = _post(client, request).json()["detail"]
    assert "b.measures: 1 unknown measure name(s), e.g. ['lh_nowhere_thickness']" in detail
    count = len(request["a"]["measures"])
    assert f"the examples, GET /v1/models/NAME/examples, name all {count}" in detail
    examples = client.get("/v1/models/twins/examples").json()["examples"]
    assert len(examples[0]["request"]["a"]["measures"]) == count  # as the message says


def test_measures_in_any_order_give_the_same_rows(client: TestClient, served: ServedModel) -> None:
    """Measures in the model's own order take a shortcut; any other order, the same rows."""
    request = _example(client)
    features = served.adapter.features  # type: ignore[attr-defined]
    assert list(request["a"]["measures"]) == features  # the examples use the model's order
    request["a"]["measures"][features[3]] = None
    shuffled = copy.deepcopy(request)
    order = np.random.default_rng(0).permutation(len(features))
    shuffled["a"]["measures"] = {features[i]: request["a"]["measures"][features[i]] for i in order}
    parse = served.adapter.request_type.model_validate
    rows, again = (served.adapter.decode(parse(r)) for r in (request, shuffled))
    for row, other in zip(rows, again, strict=True):
        np.testing.assert_array_equal(row, other)
    assert np.isnan(rows[0][0, 3]) and np.isnan(rows[0]).sum() == 1
    assert _post(client, shuffled).json() == _post(client, request).json()


def test_every_prediction_is_captured_with_version_and_features(
    served: ServedModel, tmp_path: Path
) -> None:
    store = CaptureStore(tmp_path / "c.db")
    with _client(served, ServeSettings(), store) as c:
        requests = [_example(c, n) for n in range(4)]
        for request in requests:
            assert _post(c, request).status_code == 200
    rows = store.read(model="twins")
    assert len(rows) == 4 and {r.version for r in rows} == {"1"}
    assert set(rows[0].features) == {
        "age", "male_share", "missing_share", "level", "spread", "pc1", "pc2", "pc3",
        "embedding_distance",
    }  # fmt: skip
    assert set(rows[0].outputs) == {"probability", "similarity"}
    inputs = served.adapter.decode(served.adapter.request_type.model_validate(requests[3]))
    distance = served.run(inputs)[2][0]
    assert rows[3].features["embedding_distance"] == pytest.approx(float(distance), rel=1e-5)
    assert all(r.latency_ms >= 0 for r in rows)


def test_traffic_a_client_marks_is_captured_as_its_own_and_kept_from_drift(
    served: ServedModel, tmp_path: Path
) -> None:
    # A load test replays the examples: captured as live traffic, it read as drift (11 of 11
    # columns after `modelcycle loadtest`), on `monitor` and on the server's own checks.
    from modelcycle.monitoring.monitor import version_captures

    store = CaptureStore(tmp_path / "c.db")
    with _client(served, ServeSettings(), store) as c:
        body = _example(c)
        assert _post(c, body).status_code == 200
        assert _post(c, body, {"X-Capture-Source": "loadtest"}).status_code == 200
        for bad in ("", "a b", "../x", "x" * 33):
            refused = _post(c, body, {"X-Capture-Source": bad})
            assert refused.status_code == 422, (bad, refused.text)
            assert "x-capture-source" in refused.text.lower()
    assert [r.source for r in store.read(model="twins")] == ["live", "loadtest"]
    assert [r.source for r in version_captures(store, served, None, None)] == ["live"]


def test_listing_health_readiness_metrics_page_and_openapi(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert [(m["name"], m["alias"], m["version"]) for m in models] == [("twins", "champion", "1")]
    assert models[0]["outputs"] == ["probability", "similarity"]
    assert models[0]["monitor_outputs"] == ["embedding_distance"]
    code = git_state(Path.cwd())
    assert models[0]["lineage"]["git_sha"] == code["git_sha"]
    assert models[0]["lineage"]["git_dirty"] == code["git_dirty"]
    assert "cv_auc_twin_vs_unrelated" in models[0]["lineage"]
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json() == {"ready": True}
    _post(client, _example(client))
    _post(client, {"a": 1})
    metrics = client.get("/metrics").text
    assert PREDICT_SERIES + ',status="200"} 1.0' in metrics
    assert PREDICT_SERIES + ',status="422"} 1.0' in metrics
    info = 'modelcycle_model_info{alias="champion",model="twins",variant="fp32",version="1"}'
    assert info + " 1.0" in metrics
    assert "modelcycle_request_duration_seconds_bucket" in metrics
    assert 'modelcycle_batch_size_count{model="twins"} 1.0' in metrics
    assert "modelcycle_ready 1.0" in metrics
    page = client.get("/")
    assert page.status_code == 200 and "<title>modelcycle</title>" in page.text
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["oneOf"][0]["title"] == "PairRequest"


def test_the_openapi_document_gives_a_working_example_and_the_refusals(
    client: TestClient,
) -> None:
    # Swagger's "Try it out" sent {"age": 0, "measures": {"additionalProp1": 0}}: a 422
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/{name}/predict"]["post"]
    name = next(p for p in operation["parameters"] if p["name"] == "name")
    assert name["example"] == "twins"
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    assert list(examples) == ["twins"] and examples["twins"]["summary"].startswith("twins: ")
    assert _post(client, examples["twins"]["value"]).status_code == 200
    documented = set(operation["responses"])
    assert {"200", "400", "404", "408", "413", "415", "422", "429", "504"} <= documented
    assert list(operation["requestBody"]["content"]) == ["application/json"]  # no file types


def test_a_number_of_thousands_of_digits_is_named_without_python_s_advice(
    client: TestClient,
) -> None:
    # 422 "Exceeds the limit (4300 digits) ...; use sys.set_int_max_str_digits() to increase
    # the limit": advice for the server's code, not for the client
    text = json.dumps(_example(client)).replace('"age": ', '"age": ' + "9" * 5000 + ', "x": ', 1)
    refused = client.post(PREDICT, content=text, headers=JSON_TYPE)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "has 5,000 digits" in detail and "sys.set_int_max_str_digits" not in detail


def test_the_answer_has_the_shape_the_document_and_the_listing_give(client: TestClient) -> None:
    # The 200 of predict was documented as {}: a client could not learn the answer's keys.
    operation = client.get("/openapi.json").json()["paths"]["/v1/models/{name}/predict"]["post"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    listed = client.get("/v1/models").json()["models"][0]
    assert schema["properties"]["outputs"] == listed["answer_schema"]
    assert listed["answer_schema"]["required"] == ["probability", "similarity"]
    # what each number means, for the web page and clients (it said "probability: 0.8000")
    probability = listed["answer_schema"]["properties"]["probability"]
    assert probability["title"] == "twin-like pair" and (
        probability["minimum"],
        probability["maximum"],
    ) == (0, 1)
    assert (
        "twin-like pair (same family, same age) rather than unrelated" in probability["description"]
    )
    assert "Cosine similarity" in listed["answer_schema"]["properties"]["similarity"]["description"]
    assert schema["properties"]["version"]["examples"] == ["1"]
    answer = _post(client, _example(client)).json()
    jsonschema.Draft202012Validator(schema).validate(answer)
    outputs = answer["outputs"]
    for wrong in (
        {**answer, "model": "other"},
        {**answer, "outputs": {**outputs, "probability": [outputs["probability"]]}},
        {**answer, "outputs": {"probability": outputs["probability"]}},
        {**answer, "extra": 1},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(schema).validate(wrong)


def test_one_error_repeated_among_siblings_is_listed_once_with_its_count(
    client: TestClient,
) -> None:
    # Every measure sent as a string gave pydantic's message once per measure, 20 shown,
    # and the one different error (the age) was cut off.
    request = _example(client)
    wrong = copy.deepcopy(request)
    names = list(wrong["a"]["measures"])
    wrong["a"]["measures"] = dict.fromkeys(names, "n/a")
    wrong["b"]["age"] = -3
    refused = _post(client, wrong)
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert [(d["loc"][:2], d["type"]) for d in detail] == [
        *[(["a", "measures"], "float_type")] * 3,
        (["b", "age"], "greater_than"),
    ]
    assert [d["loc"][2] for d in detail[:3]] == names[:3]
    assert "more like it" not in detail[1]["msg"]
    assert f"(and {len(names) - 3} more like it in a.measures)" in detail[2]["msg"]
    # a few errors of a kind are all listed: both people missing
    missing = _post(client, {}).json()["detail"]
    assert [d["loc"] for d in missing] == [["a"], ["b"]]
    assert not any("more like it" in d["msg"] for d in missing)


def test_the_openapi_document_gives_both_shapes_of_422(client: TestClient) -> None:
    # It documented only pydantic's list of errors; the model's own checks answer a sentence.
    document = client.get("/openapi.json").json()
    schemas = document["components"]["schemas"]
    operation = document["paths"]["/v1/models/{name}/predict"]["post"]
    shapes = operation["responses"]["422"]["content"]["application/json"]["schema"]["oneOf"]
    detail_types = {
        schemas[shape["$ref"].rsplit("/", 1)[1]]["properties"]["detail"]["type"] for shape in shapes
    }
    assert detail_types == {"string", "array"}
    request = _example(client)
    checked = copy.deepcopy(request)
    first = next(iter(checked["a"]["measures"]))
    checked["a"]["measures"][first] = 1e30  # the model's own plausibility check
    answers = [_post(client, checked), _post(client, {"a": 1})]
    assert [a.status_code for a in answers] == [422, 422]
    assert {type(a.json()["detail"]).__name__ for a in answers} == {"str", "list"}


def test_requests_are_counted_by_the_route_that_answered(client: TestClient) -> None:
    # The OpenAPI document and the docs' files were counted as route="unmatched", as 404s are
    asset = re.search(r'src="(/docs-assets/[^"]+)"', client.get("/docs").text)
    assert asset is not None, "the docs page links no script of its own"
    for path in ("/openapi.json", asset[1], "/no-such-page", "/healthz"):
        client.get(path)
    counted = {
        (sample.labels["route"], sample.labels["status"])
        for family in text_string_to_metric_families(client.get("/metrics").text)
        if family.name == "modelcycle_requests"
        for sample in family.samples
        if sample.name == "modelcycle_requests_total"
    }
    assert {("/openapi.json", "200"), ("/docs", "200"), ("/docs-assets", "200")} <= counted
    assert {("/healthz", "200"), ("unmatched", "404")} <= counted
    assert not any(route == "unmatched" and status == "200" for route, status in counted)


def test_drift_on_a_server_that_captures_nothing_says_why(served: ServedModel) -> None:
    # The route did not exist without capture: GET .../drift read {"detail": "Not Found"}.
    with _client(served, ServeSettings()) as client:
        response = client.get("/v1/models/twins/drift")
        assert response.status_code == 404
        assert "serve.capture=false" in response.json()["detail"]
        assert "/v1/models/{name}/drift" not in client.get("/openapi.json").json()["paths"]


def test_not_ready_until_the_models_are_loaded(served: ServedModel) -> None:
    client = TestClient(create_app(lambda: [served], ServeSettings()))  # lifespan not run
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("name", "status"),
    [("nope", 404), ("..%2F..%2Fetc%2Fpasswd", 404), ("twins%00", 404), ("x" * 300, 404)],
)
def test_unknown_and_path_like_model_names(client: TestClient, name: str, status: int) -> None:
    response = client.post(
        f"/v1/models/{name}/predict", content=b"{}", headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    detail = response.json()["detail"]
    # a name with a slash never reaches the handler; any other unknown name lists the models
    assert detail == "Not Found" if "%2F" in name else "served models: twins" in detail


def _mutate(request: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(request))
    target = copy
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return copy


_DELETE = object()
BAD_FIELDS = [
    ("a.age", -3),
    ("a.age", 500),
    ("a.age", "old"),
    ("a.age", None),
    ("a.sex", "X"),
    ("a.sex", 1),
    ("a.acquisition", 3),
    ("a.acquisition", True),  # a code, not a flag: it was taken for 1
    ("a.measures", []),
    ("a.measures", "lots"),
    ("a.extra", 1),
    ("extra", 1),
    ("b", _DELETE),
    ("a.age", _DELETE),
    ("a.measures", _DELETE),
    ("b", [1, 2, 3]),
    ("a", None),
    ("a.measures.CSF", "12"),
    ("a.measures.CSF", [1.0]),
    ("a.measures.CSF", {"v": 1}),
    ("a.measures.CSF", 1e400),
    ("a.measures.CSF", 1e39),  # finite, but infinite in float32
    ("a.measures.not_a_freesurfer_name", 1.0),
    ("a.measures./etc/passwd", 1.0),
    ("a.measures", {f"m{i}": 1.0 for i in range(3000)}),
    ("a.measures.CSF", True),
    ("a.age", "25"),
]


@pytest.mark.parametrize(("path", "value"), BAD_FIELDS)
def test_bad_fields_get_422_naming_the_field(client: TestClient, path: str, value: Any) -> None:
    response = _post(client, _mutate(_example(client), path, value))
    assert response.status_code == 422, response.text
    detail = json.dumps(response.json()["detail"])
    assert path.split(".")[0] in detail


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_refused(client: TestClient, constant: str) -> None:
    text = json.dumps(_example(client)).replace('"age": ', f'"age": {constant}, "_": ', 1)
    response = client.post(PREDICT, content=text, headers={"content-type": "application/json"})
    assert response.status_code == 422 and constant.lstrip("-") in response.json()["detail"]
    # a plain refusal: it used to add "(or null)", which most request fields refuse
    assert response.json()["detail"].endswith("is not a number JSON allows; send finite numbers")


def _repeat(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


@pytest.mark.parametrize(
    ("repeat", "key"),
    [
        # a measure: the value the model got was the second, without a word
        pytest.param(
            lambda text, m: _repeat(text, f'"{m}": ', f'"{m}": 1.0, "{m}": '),
            "MEASURE",
            id="measure",
        ),
        # a whole person, at the top
        pytest.param(
            lambda text, m: text[:-1] + ', "a": ' + json.dumps(json.loads(text)["a"]) + "}",
            "a",
            id="person",
        ),
        # with spaces before the colons, and where the first value is refused (age -1)
        pytest.param(
            lambda text, m: _repeat(text, '"age": ', '"age" : 30, "age" \n: '), "age", id="spaced"
        ),
        pytest.param(
            lambda text, m: _repeat(text, '"age": ', '"age": 30, "age": -1, "_": '),
            "age",
            id="refused",
        ),
    ],
)
def test_a_key_given_twice_is_refused_by_name(
    client: TestClient, repeat: Callable[[str, str], str], key: str
) -> None:
    example = _example(client)
    measure = next(iter(example["a"]["measures"]))
    text = repeat(json.dumps(example), measure)
    response = client.post(PREDICT, content=text, headers=JSON_TYPE)
    assert response.status_code == 422, response.text
    named = measure if key == "MEASURE" else key
    assert response.json()["detail"] == (
        f"The key {named!r} is given twice in one object of the body, and only one value "
        "can count; send each key once."
    )
    assert _post(client, example).status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"a": ', "application/json", 400),
        (b"\xff\xfe", "application/json", 400),
        (b"", "application/json", 400),
        (b"[]", "application/json", 422),
        (b"42", "application/json", 422),
        (b'"text"', "application/json", 422),
        (b"null", "application/json", 422),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400),
        (b"{}", "text/plain", 415),
        (b"{}", "", 415),
        (b"{}", "application/x-www-form-urlencoded", 415),
        (b"{}", "application/json; charset=utf-8", 422),
    ],
)
def test_malformed_bodies(client: TestClient, body: bytes, content_type: str, status: int) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(PREDICT, content=body, headers=headers)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("encoding", ["gzip", "br, gzip", "GZIP"])
def test_a_compressed_body_is_refused_by_name(client: TestClient, encoding: str) -> None:
    # read as JSON, a gzip body was answered 400 "'utf-8' codec can't decode byte 0x8b"
    body = gzip.compress(json.dumps(_example(client)).encode())
    headers = {"content-type": "application/json", "content-encoding": encoding}
    response = client.post(PREDICT, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert response.json()["detail"] == (
        f"Content-Encoding {encoding.lower()!r} is not accepted; send the body uncompressed."
    )
    assert response.headers["accept-encoding"] == "identity"
    plain = {"content-type": "application/json", "content-encoding": "identity"}
    assert client.post(PREDICT, json=_example(client), headers=plain).status_code == 200


def test_body_limit_at_and_beyond(served: ServedModel) -> None:
    with _client(served, ServeSettings(body_limit=100)) as c:
        at_limit = b'{"a": ' + b" " * (100 - 11) + b"1}"  # exactly 100 bytes, parsed, then 422
        assert len(at_limit) == 99 or len(at_limit) <= 100
        padded = at_limit.ljust(100, b" ")
        assert (
            c.post(
                PREDICT, content=padded, headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        over = padded + b" "
        response = c.post(PREDICT, content=over, headers={"content-type": "application/json"})
        assert response.status_code == 413 and "100 bytes" in response.json()["detail"]


def test_deadline_gives_504(served: ServedModel) -> None:
    with _client(served, ServeSettings(deadline_ms=1e-6)) as c:  # no request is that fast
        response = _post(c, _example(c))
        assert response.status_code == 504 and "did not answer" in response.json()["detail"]


@pytest.mark.parametrize("value", ["0", "-5", "soon", "NaN", "inf"])
def test_a_bad_client_deadline_is_a_422_naming_the_header(client: TestClient, value: str) -> None:
    response = _post(client, _example(client), headers={"x-deadline-ms": value})
    assert response.status_code == 422, response.text
    assert "x-deadline-ms" in json.dumps(response.json()["detail"])


def test_a_client_deadline_shorter_than_the_servers_ends_the_request_at_it(
    served: ServedModel,
) -> None:
    gated = GatedSession(served.session)
    with _client(replace(served, session=gated), ServeSettings(deadline_ms=5000)) as c:
        request = _example(c)
        assert _post(c, request, headers={"x-deadline-ms": "60000"}).status_code == 200
        gated.armed = True  # every model call now waits until released
        started = time.perf_counter()
        response = _post(c, request, headers={"x-deadline-ms": "200"})
        elapsed = time.perf_counter() - started
        gated.release.set()
    assert response.status_code == 504
    assert "did not answer within 200 ms" in response.json()["detail"]
    assert 0.15 < elapsed < 3  # its own 200 ms, not the server's 5 s


def test_api_key_is_required_when_set(served: ServedModel) -> None:
    with _client(served, ServeSettings(api_key=KEY)) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200
        # probes, scrapes, the page and the API's description stay open (README says so)
        for open_route in ("/healthz", "/readyz", "/metrics", "/", "/docs", "/openapi.json"):
            assert c.get(open_route).status_code == 200, open_route
        assert c.get("/v1/models/twins/examples").status_code == 401  # every /v1 route
        # the scheme's name in any case, and a 401 that says which scheme it wants
        for scheme in ("bearer", "BEARER"):
            ok = c.get("/v1/models", headers={"authorization": f"{scheme} {KEY}"})
            assert ok.status_code == 200, scheme
        assert c.get("/v1/models").headers["www-authenticate"] == "Bearer"
    # a short word is guessed in a few thousand requests; the refusal does not repeat it
    with pytest.raises(ValueError, match="api_key has 6 characters") as refused:
        ServeSettings(api_key="s3cret")
    assert "s3cret" not in str(refused.value)
    # a key read from a file (a Kubernetes secret) ends in a newline no client sends
    with _client(served, ServeSettings(api_key=KEY + "\n")) as c:
        assert c.get("/v1/models", headers={"authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_document_declares_the_key_and_leaves_the_held_out_examples_out(
    served: ServedModel,
) -> None:
    # With a key, /openapi.json (open) gave the held-out example pair that the keyed
    # examples route refuses, and declared no key: Swagger had no Authorize button.
    with _client(served, ServeSettings(api_key=KEY)) as c:
        document = c.get("/openapi.json").json()
        assert c.get("/v1/models/twins/examples").status_code == 401
        schemes = document["components"]["securitySchemes"]
        assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
        assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        for path, item in document["paths"].items():
            for method, operation in item.items():
                keyed = operation.get("security")
                if path.startswith("/v1/"):
                    assert keyed == [{"bearer": []}, {"apiKey": []}], (path, method)
                    assert "401" in operation["responses"], (path, method)
                else:  # probes, metrics, the page and the document itself stay open
                    assert keyed is None, (path, method)
                    assert c.request(method.upper(), path).status_code != 401, path
        predict = document["paths"]["/v1/models/{name}/predict"]["post"]
        body = predict["requestBody"]["content"]["application/json"]
        assert "examples" not in body and body["schema"]["oneOf"]
        example = c.get("/v1/models/twins/examples", headers={"x-api-key": KEY}).json()
        assert json.dumps(example["examples"][0]["request"]) not in json.dumps(document)
    with _client(served, ServeSettings()) as c:  # no key: nothing declared, the example given
        document = c.get("/openapi.json").json()
        assert "securitySchemes" not in document["components"]
        predict = document["paths"]["/v1/models/{name}/predict"]["post"]
        assert "examples" in predict["requestBody"]["content"]["application/json"]


def test_cors_is_closed_by_default_and_opens_per_origin(served: ServedModel) -> None:
    preflight = {"origin": "https://example.org", "access-control-request-method": "POST"}
    with _client(served, ServeSettings()) as c:
        assert "access-control-allow-origin" not in c.options(PREDICT, headers=preflight).headers
    with _client(served, ServeSettings(cors_origins=("https://example.org",))) as c:
        allowed = c.options(PREDICT, headers=preflight).headers
        assert allowed["access-control-allow-origin"] == "https://example.org"
        # a page on that origin may send the key and a deadline
        asking = {**preflight, "access-control-request-headers": "authorization,x-deadline-ms"}
        with_headers = c.options(PREDICT, headers=asking)
        assert with_headers.status_code == 200, with_headers.text
        assert "x-deadline-ms" in with_headers.headers["access-control-allow-headers"].lower()


def test_models_load_only_as_hash_checked_onnx(
    served_workspace: ServedWorkspace, tmp_path: Path
) -> None:
    registry = served_workspace.registry
    version = registry.resolve("twins@champion")
    registry.set_tags(version, {"export.fp32.sha256": "0" * 64})
    try:
        with pytest.raises(ModelLoadError, match="does not match the fp32 export recorded"):
            load_served(registry, "twins@champion", tmp_path, threads=1)
    finally:
        registry.set_tags(version, {"export.fp32.sha256": version.tags["export.fp32.sha256"]})
    for reference in ("twins/1", "@champion", "twins@"):  # "@champion" got MLflow's words
        with pytest.raises(ModelLoadError, match=r"give NAME@ALIAS, e\.g\. twins@champion"):
            load_served(registry, reference, tmp_path, threads=1)
    # a local copy changed on disk is copied from the registry again, not blamed on the export
    served = load_served(registry, "twins@champion", tmp_path, threads=1)
    (onnx,) = tmp_path.glob("twins-v*/**/onnx/model.onnx")
    onnx.write_bytes(onnx.read_bytes() + b"garbage")
    again = load_served(registry, "twins@champion", tmp_path, threads=1)
    assert again.version == served.version
    assert sha256_file(onnx) == version.tags["export.fp32.sha256"]


def test_batched_run_splits_results_back_per_request(served: ServedModel) -> None:
    from modelcycle.serving.app import _Payload, _run_batch

    requests = [e["request"] for e in served.examples]
    payloads = [
        _Payload(served, served.adapter.decode(served.adapter.request_type.model_validate(r)), {})
        for r in requests
    ]
    batched = _run_batch(served, payloads, None)
    for payload, result in zip(payloads, batched, strict=True):
        alone = served.run(payload.rows)
        np.testing.assert_allclose(result["probability"], alone[0], rtol=1e-6)
    assert len({float(r["similarity"][0]) for r in batched}) == len(requests)


def test_settings_are_frozen() -> None:
    settings = ServeSettings()
    assert replace(settings, max_batch=4).max_batch == 4


def test_hot_reload_swaps_versions_without_failing_a_request(served: ServedModel) -> None:
    """Requests keep flowing from threads while the alias 'moves' from version 1 to 2."""
    import threading
    import time

    v2 = replace(served, version="2")
    calls = {"n": 0}

    def reload(current: ServedModel) -> ServedModel | None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("registry unreachable")  # a failed check keeps version 1
        return v2 if current.version == "1" and calls["n"] >= 3 else None

    settings = ServeSettings(reload_seconds=0.05)
    with TestClient(create_app(lambda: [served], settings, None, reload)) as c:
        request = _example(c)
        versions: list[str] = []
        failures: list[int] = []

        def load() -> None:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and "2" not in versions[-5:]:
                response = _post(c, request)
                if response.status_code != 200:
                    failures.append(response.status_code)
                else:
                    versions.append(response.json()["version"])

        def documented_version() -> list[str]:
            operation = c.get("/openapi.json").json()["paths"][OPERATION]["post"]
            answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
            return answer["properties"]["version"]["examples"]

        assert documented_version() == ["1"]
        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        metrics = c.get("/metrics").text
        assert documented_version() == ["2"]  # the document follows the swap
    assert failures == []
    assert versions[0] == "1" and versions[-1] == "2"
    first_two = versions.index("2")
    assert set(versions[:first_two]) == {"1"}
    info = 'modelcycle_model_info{alias="champion",model="twins",variant="fp32",version="%s"} %s'
    assert info % ("2", "1.0") in metrics and info % ("1", "0.0") in metrics
    assert 'modelcycle_reloads_total{model="twins",outcome="failed"} 1.0' in metrics
    assert 'modelcycle_reloads_total{model="twins",outcome="swapped"} 1.0' in metrics


def test_a_stop_signal_turns_readiness_false_before_draining(served: ServedModel) -> None:
    import signal

    import uvicorn

    from modelcycle.serving.server import GracefulServer

    app = create_app(lambda: [served], ServeSettings())
    with TestClient(app) as c:
        assert c.get("/readyz").status_code == 200
        server = GracefulServer(uvicorn.Config(app), app.state.stop_accepting)
        server.handle_exit(signal.SIGTERM, None)
        assert server.should_exit
        assert c.get("/readyz").status_code == 503
        assert "modelcycle_ready 0.0" in c.get("/metrics").text
        assert _post(c, _example(c)).status_code == 200  # in-flight work is still answered


def test_a_stop_signal_during_a_metric_write_turns_readiness_false_without_deadlock(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A signal handler runs on the main thread between two bytecodes. One that came while
    # the event loop held prometheus_client's lock (one for every value in multi-process
    # mode, not re-entrant) set the readiness gauge, waited for itself, and the worker
    # never stopped after SIGTERM.
    from modelcycle.serving import app as app_module

    created: list[Any] = []
    real = app_module.ServerMetrics.create

    def create(cls: type) -> Any:
        created.append(real())
        return created[-1]

    monkeypatch.setattr(app_module.ServerMetrics, "create", classmethod(create))
    app = create_app(lambda: [served], ServeSettings())
    with TestClient(app) as c:
        lock = created[0].ready._value._lock  # the gauge's lock (prometheus_client's own)
        returned = threading.Event()

        def main_thread_writing_a_metric() -> None:
            with lock:  # the thread the handler interrupts holds the lock
                app.state.stop_accepting()  # what the stop signal's handler calls
                returned.set()

        interrupted = threading.Thread(target=main_thread_writing_a_metric, daemon=True)
        interrupted.start()
        if not returned.wait(5):
            lock.release()  # a Lock has no owner: let the stuck thread, and the app, go on
            pytest.fail("the stop handler waited for a lock its own thread held")
        interrupted.join(5)
        assert c.get("/readyz").status_code == 503
        for _ in range(50):  # set once the lock was let go
            if "modelcycle_ready 0.0" in c.get("/metrics").text:
                break
            time.sleep(0.05)
        assert "modelcycle_ready 0.0" in c.get("/metrics").text


class GatedSession:
    """An ONNX session whose calls, once armed, wait until the test releases them."""

    def __init__(self, inner: Any, seconds: float = 0.0) -> None:
        self.inner, self.armed, self.seconds = inner, False, seconds  # at least `seconds` a call
        self.entered, self.release = threading.Event(), threading.Event()

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        if self.armed:
            self.entered.set()
            self.release.wait(10)
        time.sleep(self.seconds)
        return self.inner.run(names, feeds)


@contextlib.contextmanager
def _full_queue(
    served: ServedModel, settings: ServeSettings, headers: dict[str, str] | None = None
) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    """A client whose model holds one request and has one more queued, with a queue of one;
    on leaving, the model is released and both held requests must have been answered."""
    gated = GatedSession(served.session)
    settings = replace(settings, max_batch=1, queue_limit=1)
    with _client(replace(served, session=gated), settings) as c:
        request = _example(c, headers=headers)
        gated.armed = True
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(_post, c, request, headers)  # held by the model thread
            assert gated.entered.wait(10)
            waiting = pool.submit(_post, c, request, headers)  # fills the one queue place
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _queue_depth(c, headers):
                time.sleep(0.01)
            try:
                yield c, request
            finally:
                gated.release.set()
            answered = [running.result(10), waiting.result(10)]
    assert [r.status_code for r in answered] == [200, 200]


def test_a_full_queue_sheds_at_once_with_429_and_retry_after(served: ServedModel) -> None:
    with _full_queue(served, ServeSettings()) as (c, request):
        started = time.perf_counter()
        shed = _post(c, request)
        shed_seconds = time.perf_counter() - started
        # shed before the body is read: not even a broken body gets past the full queue
        garbage = c.post(PREDICT, content=b"{not json", headers={"content-type": "x/y"})
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert "twins is overloaded (queue full" in shed.json()["detail"]
    assert shed_seconds < 5  # answered while the model was still held, not after
    assert garbage.status_code == 429


def test_shedding_before_routing_still_checks_the_key_the_deadline_and_the_name(
    served: ServedModel,
) -> None:
    """Refusals are answered before FastAPI routes the request; whatever the path and headers
    alone do not settle is still answered by the routes, as without an overload."""
    origin = "https://example.org"
    settings = ServeSettings(api_key=KEY, cors_origins=(origin,))
    key = {"x-api-key": KEY}
    with _full_queue(served, settings, key) as (c, request):
        shed = _post(c, request, {**key, "origin": origin})
        bearer = _post(c, request, {"authorization": f"Bearer {KEY}"})
        no_key = _post(c, request)
        wrong_key = _post(c, request, {"x-api-key": KEY + "!"})
        bad_deadlines = [
            _post(c, request, {**key, "x-deadline-ms": v}) for v in ("soon", "-5", "0", "inf")
        ]
        unknown = c.post("/v1/models/nope/predict", json=request, headers=key)
        metrics = c.get("/metrics", headers=key).text
    assert shed.status_code == 429 and shed.headers["retry-after"] == "1"
    assert shed.headers["access-control-allow-origin"] == origin
    assert bearer.status_code == 429
    assert [no_key.status_code, wrong_key.status_code] == [401, 401]
    assert "API key" in no_key.json()["detail"]
    assert [r.status_code for r in bad_deadlines] == [422] * 4
    assert all("x-deadline-ms" in json.dumps(r.json()["detail"]) for r in bad_deadlines)
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    # counted under the route's template and the model, like the routes' own answers
    assert f'{PREDICT_SERIES},status="429"}} 2.0' in metrics
    assert f'{PREDICT_SERIES},status="401"}} 2.0' in metrics


def test_a_real_server_writes_refusals_from_the_protocol_as_the_app_writes_them(
    served: ServedModel,
) -> None:
    """uvicorn with the server's protocol: a refusal the head settles is written before any
    ASGI task, with the app's own status, headers and body, and counted on /metrics."""

    from modelcycle.serving.protocol import OpsFirstHttp

    app = create_app(lambda: [served], ServeSettings())
    rule, answered_early = app.state.early_refusal, []

    def counting(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> Any:
        answer = rule(method, target, headers)
        if answer is not None:
            answered_early.append(target)
        return answer

    app.state.early_refusal = counting
    with (
        _in_uvicorn(app, http=OpsFirstHttp) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c,
    ):
        request = c.get("/v1/models/twins/examples").json()["examples"][0]["request"]
        assert c.post(PREDICT, json=request).status_code == 200  # one answer's time known
        tiny = {"x-deadline-ms": "0.001"}  # shorter than any answer: refused at once
        early = c.post(PREDICT, json=request, headers=tiny)
        via_app = c.post(PREDICT + "?from=app", json=request, headers=tiny)  # to _Shed
        again = c.post(PREDICT, json=request)  # on the same kept-alive connection
        metrics = c.get("/metrics").text
    assert early.status_code == via_app.status_code == 504
    assert "twins cannot answer within 0.001 ms" in early.json()["detail"]
    assert early.json() == via_app.json()
    assert {k: v for k, v in early.headers.items() if k != "date"} == {
        k: v for k, v in via_app.headers.items() if k != "date"
    }
    assert again.status_code == 200
    assert answered_early == [PREDICT.encode()]  # the query sent the other to the app
    assert PREDICT_SERIES + ',status="504"} 2.0' in metrics


def test_shedding_answers_only_refusals_and_passes_everything_else_on_untouched() -> None:
    from modelcycle.serving.app import _Shed, _ShedRule, _State
    from modelcycle.serving.batching import MicroBatcher
    from modelcycle.serving.metrics import ServerMetrics

    state = _State(ready=True)
    state.batchers["full"] = MicroBatcher(lambda p: p, queue_limit=0)  # refuses every put
    state.batchers["idle"] = MicroBatcher(lambda p: p)
    passed_on: list[str] = []

    async def routes(scope: dict[str, Any], receive: Any, send: Any) -> None:
        passed_on.append(f"{scope['method']} {scope['path']}")

    shed = _Shed(routes, _ShedRule(state, ServeSettings(), ServerMetrics.create()))

    def call(method: str, path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            raise AssertionError("a refusal must not read the body")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": method, "path": path, "headers": []}
        asyncio.run(shed(scope, receive, send))
        return sent

    refused = call("POST", "/v1/models/full/predict")
    assert refused[0]["status"] == 429 and (b"retry-after", b"1") in refused[0]["headers"]
    assert b"full is overloaded (queue full" in refused[1]["body"]
    assert passed_on == []
    others = [
        ("POST", "/v1/models/idle/predict"),  # room in its queue
        ("GET", "/v1/models/full/predict"),
        ("POST", "/v1/models/nope/predict"),
        ("POST", "/v1/models/full/predict/more"),
        ("POST", "/v1/models/full/examples"),
    ]
    for method, path in others:
        assert call(method, path) == []
    state.ready = False  # stopping: the routes answer as they do then
    assert call("POST", "/v1/models/full/predict") == []
    assert passed_on == [f"{m} {p}" for m, p in others] + ["POST /v1/models/full/predict"]


def test_a_refused_request_leaves_its_keep_alive_connection_usable_in_uvicorn(
    served: ServedModel,
) -> None:
    """Refusals do not read the body: uvicorn must still skip it and keep the connection."""
    gated = GatedSession(served.session)
    settings = ServeSettings(max_batch=1, queue_limit=1)
    app = create_app(lambda: [replace(served, session=gated)], settings)
    with _in_uvicorn(app) as port:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        try:
            request = json.dumps(
                httpx.get(url + "/v1/models/twins/examples").json()["examples"][0]["request"]
            )
            gated.armed = True
            address = ("127.0.0.1", port)
            held, queued, refused = (socket.create_connection(address) for _ in range(3))
            with held, queued, refused:
                held.sendall(_http_post(request))
                assert gated.entered.wait(10)
                queued.sendall(_http_post(request))
                while (
                    'modelcycle_queue_depth{model="twins"} 1.0'
                    not in httpx.get(url + "/metrics").text
                ):
                    assert time.monotonic() < deadline, "the second request never queued"
                    time.sleep(0.01)
                padded = request[:-1] + ', "padding": "' + "x" * 300_000 + '"}'  # 300 kB unread
                answers = []
                for body in (padded, padded):
                    refused.sendall(_http_post(body))
                    answers.append(_http_answer(refused))
                gated.release.set()
                answers += [_http_answer(held), _http_answer(queued)]
                refused.sendall(_http_post(request))  # the same connection, after two refusals
                answers.append(_http_answer(refused))
            assert [status for status, _ in answers] == [429, 429, 200, 200, 200]
            assert b"queue full" in answers[0][1]
        finally:
            gated.release.set()


def test_head_sends_the_headers_of_get_without_its_body_in_uvicorn(served: ServedModel) -> None:
    app = create_app(lambda: [served], ServeSettings())
    with (
        _in_uvicorn(app) as port,
        socket.create_connection(("127.0.0.1", port), timeout=10) as connection,
    ):
        for path in ("/metrics", "/v1/models"):
            ask = f"HEAD {path} HTTP/1.1\r\nhost: test\r\n\r\nGET /healthz HTTP/1.1\r\n"
            connection.sendall(ask.encode() + b"host: test\r\n\r\n")
            data = b""
            while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
                chunk = connection.recv(65536)
                assert chunk, f"connection closed after {data!r}"
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert int(re.search(rb"content-length: (\d+)", head.lower())[1]) > 100  # type: ignore[index]
            # the next bytes are the GET's answer: the HEAD sent no body
            assert rest.startswith(b"HTTP/1.1 200") and rest.endswith(b'{"status":"alive"}')


class _CountedSession(GatedSession):
    """A gated session that records the rows of every call."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.rows: list[int] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.rows.append(len(next(iter(feeds.values()))))
        return super().run(names, feeds)


def test_a_queued_request_whose_client_left_is_dropped_not_computed(
    served: ServedModel,
) -> None:
    """uvicorn with the server's protocol: a client that closes its connection while its
    request waits in the queue (a page's cancelled request, a timeout) costs no model call."""
    from modelcycle.serving.protocol import OpsFirstHttp

    counted = _CountedSession(served.session)
    settings = ServeSettings(max_batch=1, deadline_ms=30_000)  # the test decides the waits
    app = create_app(lambda: [replace(served, session=counted)], settings)
    with (
        _in_uvicorn(app, http=OpsFirstHttp) as port,
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c,
    ):

        def metric(prefix: str) -> float:
            lines = c.get("/metrics").text.splitlines()
            return next((float(x.split()[-1]) for x in lines if x.startswith(prefix)), 0.0)

        def waited_for(prefix: str, value: float) -> bool:
            deadline = time.monotonic() + 5
            while metric(prefix) != value and time.monotonic() < deadline:
                time.sleep(0.01)
            return metric(prefix) == value

        body = json.dumps(c.get("/v1/models/twins/examples").json()["examples"][0]["request"])
        counted.rows.clear()
        counted.armed = True
        with socket.create_connection(("127.0.0.1", port)) as held:
            held.sendall(_http_post(body))
            assert counted.entered.wait(10)  # the model thread holds it
            with socket.create_connection(("127.0.0.1", port)) as leaving:
                leaving.sendall(_http_post(body))
                assert waited_for('modelcycle_queue_depth{model="twins"}', 1.0)
            left = waited_for(PREDICT_SERIES + ',status="499"}', 1.0)
            counted.armed = False
            counted.release.set()
            assert _http_answer(held)[0] == 200
        after = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert after.status_code == 200
    assert left  # answered 499 as soon as its client left, not once the model was free
    assert counted.rows == [1, 1]  # the held request and the one after; never the one that left


@contextlib.contextmanager
def _in_uvicorn(app: Any, **config: Any) -> Iterator[int]:
    """`app` under a real uvicorn on a free loopback port, in a thread, started (its
    lifespan done) before the port is given; stopped, and its thread ended, afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config)
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def _http_post(body: str) -> bytes:
    data = body.encode()
    head = f"POST {PREDICT} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
    return head.encode() + f"content-length: {len(data)}\r\n\r\n".encode() + data


def _http_answer(connection: socket.socket) -> tuple[int, bytes]:
    """Status and body of one keep-alive answer (uvicorn sends a Content-Length)."""
    connection.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert b"connection: close" not in head.lower()
    return int(head.split(b" ")[1]), body


def test_a_client_deadline_the_queue_cannot_meet_is_refused_at_once(served: ServedModel) -> None:
    slow = GatedSession(served.session, 0.1)  # at most 10 requests per second
    with _client(replace(served, session=slow), ServeSettings(max_batch=1)) as c:
        request = _example(c)
        assert _post(c, request).status_code == 200  # the server measures its rate
        # idle, 150 ms is enough for one 100 ms answer (its own answer is not waiting: it
        # was refused 429 when it counted against the half of the deadline a wait may take)
        idle = _post(c, request, {"x-deadline-ms": "150"})
        # shorter than one answer takes: no retry could meet it, and it is not an overload
        never = _post(c, request, {"x-deadline-ms": "60"})
        tiny = _post(c, request, {"x-deadline-ms": "0.001"})  # was "within 0 ms"
        slow.armed = True
        with ThreadPoolExecutor(2) as pool:
            busy = [pool.submit(_post, c, request)]  # held by the model thread
            assert slow.entered.wait(10)
            busy.append(pool.submit(_post, c, request))  # waits behind it: about 100 ms
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _queue_depth(c):
                time.sleep(0.01)
            started = time.perf_counter()
            # half of a deadline may go to waiting: 75 ms, and one request waits ahead
            refused = _post(c, request, {"x-deadline-ms": "150"})
            refused_seconds = time.perf_counter() - started
            slow.release.set()
            assert [b.result(10).status_code for b in busy] == [200, 200]
        patient = _post(c, request, {"x-deadline-ms": "2000"})
    assert idle.status_code == 200, idle.text
    assert refused.status_code == 429, refused.text
    assert "over the 75 ms budget" in refused.json()["detail"]
    assert refused_seconds < 1  # refused while the model was held, not after
    assert never.status_code == 504 and "retry-after" not in never.headers, never.text
    detail = never.json()["detail"]
    assert "cannot answer within 60 ms: one answer takes it about 10" in detail, detail
    assert "give a longer X-Deadline-Ms" in detail
    assert "cannot answer within 0.001 ms" in tiny.json()["detail"], tiny.text
    assert patient.status_code == 200


class CountingSession:
    """An ONNX session that counts its calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> Any:
        self.calls += 1
        return self.inner.run(names, feeds)


def test_a_client_deadline_the_event_loops_lag_leaves_too_short_is_refused_at_once(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The loop reads as 300 ms late: a request that reached it then has already waited that.
    monkeypatch.setattr(LoopLag, "seconds", property(lambda self: 0.3))
    counting = CountingSession(served.session)
    with _client(replace(served, session=counting), ServeSettings()) as c:
        request = _example(c)
        assert _post(c, request).status_code == 200  # the server learns how long answers take
        calls = counting.calls
        # 250 ms from the send: over before the app even saw it (the queue alone allows it)
        refused = _post(c, request, {"x-deadline-ms": "250"})
        refused_calls = counting.calls - calls
        patient = _post(c, request, {"x-deadline-ms": "1000"})
    assert refused.status_code == 429, refused.text
    assert "about 300 ms went waiting for the event loop" in refused.json()["detail"]
    assert refused_calls == 0  # refused without running the model
    assert patient.status_code == 200


def test_recent_slow_answers_refuse_short_deadlines_only_while_others_are_in_progress(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One large image answered in 241 ms made an idle server refuse every 100 ms request as
    # "overloaded" (refusals never renewed the estimate) though it answers one in 12 ms.
    monkeypatch.setattr(RecentTime, "estimate", lambda self: 0.3)  # answers took 300 ms
    gated = GatedSession(served.session)
    with (
        _client(replace(served, session=gated), ServeSettings()) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        request = _example(c)
        idle = _post(c, request, {"x-deadline-ms": "150"})
        gated.armed = True
        held = pool.submit(_post, c, request)  # in progress: a 300 ms answer is plausible now
        assert gated.entered.wait(10)
        busy = _post(c, request, {"x-deadline-ms": "150"})
        gated.release.set()
        assert held.result(10).status_code == 200
    assert idle.status_code == 200, idle.text
    assert busy.status_code == 429, busy.text
    assert "answers take about 300 ms now" in busy.json()["detail"]


def test_the_deadline_counts_from_the_arrival_the_loops_lag_implies(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LoopLag, "seconds", property(lambda self: 0.6))
    gated = GatedSession(served.session)
    with _client(replace(served, session=gated), ServeSettings(deadline_ms=5000)) as c:
        request = _example(c)
        gated.armed = True  # every model call now waits until released
        started = time.perf_counter()
        response = _post(c, request, headers={"x-deadline-ms": "1200"})
        elapsed = time.perf_counter() - started
        gated.release.set()
    assert response.status_code == 504, response.text
    # 1200 ms from the send, 600 of them spent before the app saw it: 504 after about 600 ms
    # (sooner than the client's own timeout, so its connection stays open)
    assert 0.45 < elapsed < 1.0


def test_metrics_report_the_event_loops_lag(
    served: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LoopLag, "seconds", property(lambda self: 0.25))
    with _client(served, ServeSettings()) as c:
        deadline, lines = time.monotonic() + 5, []
        while time.monotonic() < deadline:
            text = c.get("/metrics").text
            lines = [x for x in text.splitlines() if x.startswith("modelcycle_event_loop_lag")]
            if lines == ["modelcycle_event_loop_lag_seconds 0.25"]:
                break
            time.sleep(0.02)
    assert lines == ["modelcycle_event_loop_lag_seconds 0.25"]


def _queue_depth(client: TestClient, headers: dict[str, str] | None = None) -> float:
    for line in client.get("/metrics", headers=headers).text.splitlines():
        if line.startswith('modelcycle_queue_depth{model="twins"}'):
            return float(line.split()[-1])
    return 0.0


def test_an_adapter_whose_encode_takes_the_outputs_alone_still_answers(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Adapters written before `Rows` contexts existed define encode(self, outputs); the
    # server passes a context only to adapters whose decode made one.
    def encode(outputs: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"probability": float(outputs["probability"].reshape(-1)[0])}

    monkeypatch.setattr(served.adapter, "encode", encode)
    with _client(served, ServeSettings(), CaptureStore(tmp_path / "capture.db")) as client:
        response = client.post(PREDICT, json=_example(client))
    assert response.status_code == 200, response.text
    assert 0 <= response.json()["outputs"]["probability"] <= 1


def test_an_input_that_overflows_the_model_is_a_422_and_no_capture(
    served: ServedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measures of 3e38 are floats the request type takes; the default twins model then
    # overflowed to NaN, which JSON cannot carry: the server answered 500 and captured a row
    # of nulls. Such measures are refused before the model now (the next test); the model
    # here is stood in for by one that overflows on a marked request (age 99.5).
    run = served.run

    def overflowing(inputs: list[np.ndarray]) -> list[np.ndarray]:
        outputs = run(inputs)
        marked = inputs[1][:, 0] == np.float32(99.5)
        return [np.where(marked.reshape(-1, *[1] * (o.ndim - 1)), np.nan, o) for o in outputs]

    monkeypatch.setattr(served, "run", overflowing)
    store = CaptureStore(tmp_path / "capture.db")
    with _client(served, ServeSettings(), store) as client:
        request = _example(client)
        request["a"]["age"] = 99.5
        response = client.post(PREDICT, json=request)
        fine = client.post(PREDICT, json=_example(client))
    assert response.status_code == 422, response.text
    assert "no finite answer for this input" in response.json()["detail"]
    assert fine.status_code == 200
    assert len(store.read(model="twins")) == 1  # the good request only


def test_a_measure_no_brain_has_is_refused_naming_it(client: TestClient, tmp_path: Path) -> None:
    # 3e38 in one measure, or a thickness in cm for mm, got a confident answer (and was
    # captured, and fed the drift checks)
    request = _example(client)
    measures = request["b"]["measures"]
    thickness = next(k for k in measures if "thick" in k.lower() and measures[k])
    for value, name in ((3e38, next(iter(measures))), (measures[thickness] * 10, thickness)):
        bad = copy.deepcopy(request)
        bad["b"]["measures"][name] = value
        response = client.post(PREDICT, json=bad)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith(f"b.measures.{name}={np.float32(value):g} lies "), detail
        assert "standard deviations from the training cohort's mean" in detail
        assert "check the units" in detail
    everything = copy.deepcopy(request)
    everything["a"]["measures"] = {k: 1e30 for k in measures}
    detail = client.post(PREDICT, json=everything).json()["detail"]
    assert f"(and {len(measures) - 1} more)" in detail
    # the held-out examples themselves, the most extreme real rows, pass
    assert _post(client, request).status_code == 200


GETS = ("/healthz", "/readyz", "/", "/metrics", "/v1/models", "/v1/models/twins/examples")
DOCS = ("/openapi.json", "/docs")


def test_every_get_answers_head_and_a_405_allows_it(client: TestClient) -> None:
    # Load balancers' health checks and uptime monitors may send HEAD: /metrics, /v1/models
    # and the examples answered 405, and OPTIONS /healthz said "Allow: GET".
    for path in GETS + DOCS:
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.headers["content-type"] == got.headers["content-type"], path
        assert head.content == b"", path
        for method in ("OPTIONS", "PUT", "DELETE"):
            refused = client.request(method, path)
            assert refused.status_code == 405, (method, path)
            assert refused.headers["allow"] == "GET, HEAD", (method, path)
    for method in ("HEAD", "GET", "OPTIONS"):
        refused = client.request(method, PREDICT)
        assert refused.status_code == 405 and refused.headers["allow"] == "POST", method
    assert client.head("/nowhere").status_code == 404
    series = client.get("/metrics").text
    assert 'modelcycle_requests_total{model="-",route="/metrics",status="405"} 3.0' in series
    # the OpenAPI document's 405s under its own path, not with the 404s as "unmatched"
    assert 'modelcycle_requests_total{model="-",route="/openapi.json",status="405"} 3.0' in series
    assert 'route="unmatched",status="405"' not in series


def test_heads_deep_json_and_trailing_slashes_get_plain_answers(client: TestClient) -> None:
    # Valid JSON nested past the parser's depth was called invalid.
    deep = client.post(PREDICT, content=b"[" * 100_000 + b"]" * 100_000, headers=JSON_TYPE)
    assert deep.status_code == 400 and "nests deeper" in deep.json()["detail"]
    # Python 3.13's parser goes deeper than 3.11's (5,000 levels parse there): then the
    # schema refuses it; a plain answer either way
    nested = client.post(PREDICT, content=b"[" * 5000 + b"]" * 5000, headers=JSON_TYPE)
    assert nested.status_code in (400, 422), nested.text
    # A trailing slash was redirected to an address built from the Host header.
    moved = client.get("/v1/models/", headers={"host": "evil.example"}, follow_redirects=False)
    assert moved.status_code == 404 and "location" not in moved.headers


def test_the_api_docs_load_their_scripts_from_this_server(client: TestClient) -> None:
    # FastAPI's /docs loads Swagger UI from a CDN: blank offline.
    html = client.get("/docs")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    linked = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert linked and all(link.startswith("/") for link in linked), linked
    assert "cdn.jsdelivr.net" not in html.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        served = client.get(f"{DOCS_ASSETS}/{asset}")
        assert served.status_code == 200 and len(served.content) > 100_000, asset
        assert f"{DOCS_ASSETS}/{asset}" in linked
    assert client.get("/redoc").status_code == 404  # its page fetched a logo from a CDN


def test_the_docs_source_map_devtools_ask_for_is_an_empty_map(client: TestClient) -> None:
    # swagger-ui.css names a map FastAPIOffline does not ship: with /docs open, browser
    # devtools asked for it and logged a 404.
    css = client.get(f"{DOCS_ASSETS}/swagger-ui.css").text
    named = re.search(r"sourceMappingURL=([^\s*]+)", css)
    assert named is not None and named[1] == "swagger-ui.css.map"
    answer = client.get(f"{DOCS_ASSETS}/{named[1]}")
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "version": 3,
        "file": "swagger-ui.css",
        "sources": [],
        "names": [],
        "mappings": "",
    }
    assert client.head(f"{DOCS_ASSETS}/{named[1]}").status_code == 200
    # the map of a file not served there, and anything but GET or HEAD, as before
    assert client.get(f"{DOCS_ASSETS}/no-such.css.map").status_code == 404
    assert client.get(f"{DOCS_ASSETS}/%2E%2E/core.py.map").status_code == 404  # beside them
    assert client.post(f"{DOCS_ASSETS}/swagger-ui.css.map").status_code == 405


def test_the_address_serve_prints_brackets_an_ipv6_host() -> None:
    from modelcycle.serving.server import served_url

    assert served_url("::1", 8000) == "http://[::1]:8000/"  # was http://::1:8000/
    assert served_url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"
    assert served_url("localhost", 80) == "http://localhost:80/"
