"""Property-based API tests: schemathesis fuzzes every operation of the OpenAPI document.

The app runs in-process behind a TestClient, whose lifespan loads the real ONNX model before
GET /openapi.json, so the predict body schema is the served model's own. No request, valid
or invalid, may get a 5xx, and every answer has the shape the document gives its status.

Each operation gets `MAX_EXAMPLES` schema-generated cases (positive and negative), seeded by
`derandomize`, so a run is repeatable. Cases generated from the schema alone never reach the
model (its measure names are not in the schema), so a second test sends the held-out example
requests with hypothesis-chosen values, which do.

Two schemathesis 4.32 integrations do not work here, hence the operations' hypothesis
strategies and a TestClient: `schemathesis.pytest.from_fixture` sets `Node._nodeid`, which
pytest 9.2 no longer has, and its requests-based transports count pooled connections with
`pools.keys()`, which the `urllib3` that `urllib3-future` (via openneuro-py's niquests)
installs over the real one does not have.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx2  # what starlette's TestClient uses when it is installed (timm needs it)
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance

from modelcycle.monitoring.capture import CaptureStore
from modelcycle.monitoring.drift import DriftSettings
from modelcycle.monitoring.drift_service import DriftService
from modelcycle.serving.app import ServeSettings, create_app
from modelcycle.serving.loading import ServedModel

PREDICT = "/v1/models/{name}/predict"
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/readyz"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{name}/drift"),
    ("GET", "/v1/models/{name}/examples"),
    ("POST", PREDICT),
]
MAX_EXAMPLES = 100

T = TypeVar("T", bound=Callable[..., Any])


def _bounded(test: T) -> T:
    """Repeatable and bounded: fixed seed (derandomize), example count and deadline."""
    return settings(
        max_examples=MAX_EXAMPLES,
        deadline=timedelta(seconds=2),
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )(test)


@pytest.fixture
def client(served: ServedModel, tmp_path: Path) -> Iterator[TestClient]:
    store = CaptureStore(tmp_path / "capture.db")
    drift = DriftService(store, DriftSettings(), interval_seconds=0, window=100)
    app = create_app(lambda: [served], ServeSettings(), store, drift=drift)
    # a server error reaches the test as the 500 a client would get, not as an exception
    with TestClient(app, raise_server_exceptions=False) as c:  # the lifespan runs first
        yield c


@pytest.fixture
def api_schema(client: TestClient) -> schemathesis.BaseSchema:
    """The OpenAPI document as the ready app serves it."""
    loaded = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    found = sorted((method.upper(), path) for path in loaded for method in loaded[path])
    assert found == OPERATIONS
    body = loaded.raw_schema["paths"][PREDICT]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["oneOf"][0]["title"] == "PairRequest"
    return loaded


def _send(client: TestClient, case: schemathesis.Case) -> httpx2.Response:
    """Send a case the way schemathesis' own transport would serialize it."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
    if not kwargs.get("cookies"):
        kwargs.pop("cookies", None)
    if isinstance(kwargs.get("data"), bytes | str):
        kwargs["content"] = kwargs.pop("data")
    return client.request(**kwargs)


def _check(client: TestClient, case: schemathesis.Case) -> httpx2.Response:
    """Never a 5xx; every answer has its documented schema; a successful predict names
    model and version and has both outputs.

    The one 5xx a client may ask for is predict's documented 504 to its own `X-Deadline-Ms`
    when shorter than an answer takes (schemathesis sends 5e-324 ms).
    """
    response = _send(client, case)
    sent = {key.lower() for key in case.headers or {}}
    if response.status_code == 504 and "x-deadline-ms" in sent:
        assert "within" in response.json()["detail"], response.text
        return response
    case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])
    if case.operation.path == PREDICT and response.status_code == 200:
        body = response.json()
        assert set(body) == {"model", "version", "outputs"}, body
        assert body["model"] == case.path_parameters["name"] and body["version"] == "1"
        outputs = body["outputs"]
        assert set(outputs) == {"probability", "similarity"}, outputs
        assert all(isinstance(v, float) for v in outputs.values()), outputs
    return response


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_generated_request_gets_a_5xx(
    client: TestClient, api_schema: schemathesis.BaseSchema, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    # a part of the document schemathesis cannot resolve (a dangling $ref) is left out silently
    assert not operation.skipped_parameters, operation.skipped_parameters
    # half the cases name the served model, so predict gets past the 404 to the body
    names = [None, {"name": "twins"}] if operation.path_parameters else [None]
    strategy = st.one_of(
        [
            operation.as_strategy(generation_mode=mode, path_parameters=name)
            for mode in schemathesis.GenerationMode
            for name in names
        ]
    )

    @_bounded
    @given(case=strategy)
    def fuzz(case: schemathesis.Case) -> None:
        _check(client, case)

    fuzz()


FLOAT32_MAX = 3.4028234663852886e38
_measure = st.one_of(
    st.none(),
    st.floats(-1e4, 1e6),
    st.floats(allow_nan=False, allow_infinity=False),
    # JSON numbers that are finite as float64 but not all as float32, which the model takes
    st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, 3.5e38, -1e39, 1.7976931348623157e308, 5e-324]),
)
_subject_edits = st.fixed_dictionaries(
    {},
    optional={
        "age": st.floats(0, 120, exclude_min=True, exclude_max=True),
        "sex": st.sampled_from(["M", "F"]),
        "acquisition": st.sampled_from([1, 2]),
    },
)


def test_requests_that_reach_the_model_never_get_a_5xx(
    client: TestClient, api_schema: schemathesis.BaseSchema, served: ServedModel
) -> None:
    """Held-out requests with any valid values: 200 with the documented shape, or 422."""
    operation = api_schema[PREDICT]["POST"]
    names = sorted(served.examples[0]["request"]["a"]["measures"])
    statuses: set[int] = set()

    @_bounded
    @given(
        example=st.sampled_from(served.examples),
        measures=st.tuples(*[st.dictionaries(st.sampled_from(names), _measure)] * 2),
        edits=st.tuples(_subject_edits, _subject_edits),
    )
    def fuzz(
        example: dict[str, Any],
        measures: tuple[dict[str, float | None], ...],
        edits: tuple[dict[str, Any], ...],
    ) -> None:
        request = copy.deepcopy(example["request"])
        for key, values, edit in zip("ab", measures, edits, strict=True):
            request[key]["measures"].update(values)
            request[key].update(edit)
        case = operation.Case(
            path_parameters={"name": "twins"}, body=request, media_type="application/json"
        )
        response = _check(client, case)
        assert response.status_code in (200, 422), response.text
        statuses.add(response.status_code)

    fuzz()
    assert 200 in statuses
