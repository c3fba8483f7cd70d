"""Load test a running model server with Locust, headless, against budgets.

The locustfile is written for the served model from its own example requests
(`GET /v1/models/{name}/examples`), so it fits any task. Locust runs in a subprocess (its
gevent monkey-patching must not touch this process) under a hard deadline. The run leaves
Locust's CSV files and HTML report plus `summary.json` with the budgets and any misses.
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelcycle.messages import clause
from modelcycle.processes import run_in_session
from modelcycle.report_folders import ReportFolder, claimed

DEADLINE_SLACK_S = 60.0  # start-up and shutdown on top of the run's duration
CAPTURE_SOURCE = "loadtest"  # X-Capture-Source of the load test's requests
KEY_VARIABLE = "MODELCYCLE_API_KEY"  # the locustfile reads the server's key from it
FINAL_STATS = "final_stats.json"  # the locustfile's totals, written as Locust quits

LOCUSTFILE = '''"""Written by `modelcycle loadtest`: the served model's examples, in turn."""

import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, events, task

HERE = Path(__file__).parent
EXAMPLES = json.loads((HERE / "examples.json").read_text())
PATH = {path!r}
HEADERS = {headers!r}
if {keyed!r}:  # the server's key, from the environment: never written in this file
    HEADERS["Authorization"] = "Bearer " + os.environ["{key_variable}"]


@events.quitting.add_listener
def final_stats(environment, **kwargs):
    """The run's totals once every user stopped (the CSV is a snapshot taken each second)."""
    total = environment.stats.total
    (HERE / "{final}").write_text(json.dumps({{
        "requests": total.num_requests,
        "failures": total.num_failures,
        "rps": total.total_rps,
        "p50_ms": total.get_response_time_percentile(0.5) if total.num_requests else None,
        "p99_ms": total.get_response_time_percentile(0.99) if total.num_requests else None,
    }}))


class ModelUser(FastHttpUser):
    """Sends the examples back to back (closed loop: no think time)."""

    def on_start(self):
        self.bodies = itertools.cycle(EXAMPLES)

    @task
    def predict(self):
        body = next(self.bodies)
        with self.client.post(
            PATH, json=body, headers=HEADERS, name="predict", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {{response.status_code}}: {{response.text[:200]}}")
'''


class LoadTestError(RuntimeError):
    """The load test could not run; the message says what to check."""


@dataclass(frozen=True)
class Budgets:
    """What a passing run must reach.

    Attributes:
        p99_ms: Largest 99th-percentile latency, in milliseconds.
        max_error_rate: Largest share of failed requests.
        min_rps: Fewest requests per second.
    """

    p99_ms: float = 250.0
    max_error_rate: float = 0.01
    min_rps: float = 50.0

    def __post_init__(self) -> None:
        if not 0 < self.p99_ms < math.inf:
            raise ValueError(
                f"loadtest.p99_ms={self.p99_ms!r}: give the largest 99th-percentile latency "
                "to pass, in milliseconds, above 0."
            )
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(
                f"loadtest.max_error_rate={self.max_error_rate!r}: give the largest share of "
                "failed requests to pass, from 0 to 1."
            )
        if not 0 <= self.min_rps < math.inf:
            raise ValueError(
                f"loadtest.min_rps={self.min_rps!r}: give the fewest requests per second to "
                "pass, >= 0."
            )


@dataclass(frozen=True)
class LoadPlan:
    """How hard and how long: Locust users, users started per second, seconds of load."""

    users: int = 10
    spawn_rate: float = 10.0
    duration_s: float = 30.0

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(
                f"loadtest.users={self.users!r}: give the number of concurrent users, >= 1."
            )
        if not 0 < self.spawn_rate < math.inf:
            raise ValueError(
                f"loadtest.spawn_rate={self.spawn_rate!r}: give the users started per second, "
                "a finite number above 0."
            )
        if not 0 < self.duration_s < math.inf:
            raise ValueError(
                f"loadtest.duration_s={self.duration_s!r}: give the seconds of load, a whole "
                "number above 0."
            )
        if self.duration_s != int(self.duration_s):
            low, high = math.floor(self.duration_s) or 1, math.ceil(self.duration_s)
            raise ValueError(
                f"loadtest.duration_s={self.duration_s!r}: Locust runs whole seconds; give "
                f"{low if low == high else f'{low} or {high}'}."
            )


@dataclass
class LoadResult:
    """What the run measured, the budgets and which of them it missed."""

    url: str
    model: str
    plan: LoadPlan
    budgets: Budgets
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    misses: list[str] = field(default_factory=list)
    #: The folder the report went to (not part of summary.json, which lies in it).
    report_dir: Path | None = None

    @property
    def error_rate(self) -> float:
        """Share of requests that failed."""
        return self.failures / self.requests if self.requests else 1.0

    @property
    def passed(self) -> bool:
        """Every budget met."""
        return not self.misses

    def to_json(self) -> dict[str, Any]:
        """summary.json's content."""
        own = {k: v for k, v in asdict(self).items() if k != "report_dir"}
        return own | {"error_rate": self.error_rate, "passed": self.passed}


def run_loadtest(
    url: str,
    plan: LoadPlan,
    budgets: Budgets,
    out_dir: Path | ReportFolder,
    model: str | None = None,
    api_key: str | None = None,
    starting: Callable[[str], None] | None = None,
    requests: Path | None = None,
) -> LoadResult:
    """Run Locust against `url`'s model; write CSV, HTML and summary.json into `out_dir`.

    A ReportFolder for `out_dir` is claimed once the server has answered (`claimed`).

    The requests are the model's own examples, or those of `requests` (`read_requests`),
    checked by sending the first before any load. `starting` is called with the model's
    name once the server has answered, as Locust starts.

    Raises:
        LoadTestError: The server cannot be reached, serves no such model, the requests
            cannot be read or are refused, or Locust failed or overran its deadline.
    """
    if not url.startswith(("http://", "https://")):
        raise LoadTestError(
            f"{url!r} is not an HTTP URL: give the server's address with its scheme, e.g. "
            "http://127.0.0.1:8000."
        )
    url = url.rstrip("/")
    route = url.find("/v1/", url.index("//") + 2)
    if route >= 0 or url.endswith("/v1"):
        base = url[: route if route >= 0 else -3]
        raise LoadTestError(
            f"{url} is a route of the server; give the server's own address, {base}: the load "
            "test finds the model's predict route there (--model picks one of several)."
        )
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    name = _pick_model(url, model, headers)
    examples = _examples(url, name, headers)
    path = f"/v1/models/{name}/predict"
    # Marked as the load test's own traffic: captured, but kept out of the drift tests (the
    # examples replayed over and over read as drift).
    predict_headers = headers | {"X-Capture-Source": CAPTURE_SOURCE}
    if requests is not None:
        examples = read_requests(requests, examples, name)
        _check_first(f"{url}{path}", examples[0], predict_headers, requests)
    try:  # once there is something to report
        out_dir = claimed(out_dir)
        locustfile = out_dir / "locustfile.py"
        (out_dir / "examples.json").write_text(json.dumps(examples))
        locustfile.write_text(
            LOCUSTFILE.format(
                path=path,
                headers={k: v for k, v in predict_headers.items() if k != "Authorization"},
                keyed=bool(api_key),
                key_variable=KEY_VARIABLE,
                final=FINAL_STATS,
            )
        )
    except OSError as err:
        raise LoadTestError(
            f"Cannot write the report into {getattr(out_dir, 'base', out_dir)}: {clause(err)}; "
            "give --out a folder that can be made and written."
        ) from err
    if starting is not None:
        starting(name)
    _run_locust(url, plan, locustfile, out_dir, api_key)
    result = _read_stats(out_dir / FINAL_STATS, url, name, plan, budgets)
    (out_dir / "summary.json").write_text(json.dumps(result.to_json(), indent=2))
    result.report_dir = out_dir
    return result


def _send(method: str, url: str, headers: dict[str, str], **kwargs: Any) -> httpx.Response:
    try:
        return httpx.request(method, url, headers=headers, **kwargs)
    except httpx.TransportError as err:
        raise LoadTestError(
            f"Cannot reach {url}: {clause(err)}. Is `modelcycle serve` running?"
        ) from err


def _get(url: str, headers: dict[str, str]) -> Any:
    response = _send("GET", url, headers, timeout=10)
    if response.status_code == 401:
        given = "the key given was refused" if headers else "no key was given"
        raise LoadTestError(
            f"GET {url} answered 401 ({given}): the server wants its API key; set "
            f"{KEY_VARIABLE} (or serve.api_key=...) to the key it was started with."
        )
    if response.status_code != 200:
        raise LoadTestError(f"GET {url} answered {response.status_code}: {response.text[:200]}")
    return response.json()


def _pick_model(url: str, model: str | None, headers: dict[str, str]) -> str:
    served = [m["name"] for m in _get(f"{url}/v1/models", headers)["models"]]
    if model is None and len(served) == 1:
        return str(served[0])
    if model is None or model not in served:
        raise LoadTestError(
            f"{url} serves {served or 'no models'}; name one with --model"
            + ("" if model is None else f" (not {model!r})")
            + "."
        )
    return model


def _examples(url: str, name: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    examples = _get(f"{url}/v1/models/{name}/examples", headers)["examples"]
    if not examples:
        raise LoadTestError(f"{name} offers no example requests to load test with.")
    return [e["request"] for e in examples]


#: Files a folder of requests may hold, sent as the image of the model's example request.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_requests(
    path: Path, examples: list[dict[str, Any]], name: str = "{name}"
) -> list[dict[str, Any]]:
    """Request bodies from `path`: a JSON list of them, JSON Lines, or a folder of images.

    A folder's PNG and JPEG files (real uploads, larger than the held-out examples) each
    take the place of the image in the model's first example request, base64-encoded as
    the server reads it; that needs an example with exactly one image in it.

    Raises:
        LoadTestError: Naming the file and what it should hold.
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise LoadTestError(f"{path} holds no .png, .jpg or .jpeg file to send.")
        example = examples[0]
        fields = [key for key, value in example.items() if _is_image(value)]
        if len(fields) != 1:
            raise LoadTestError(
                f"The requests of {name} do not hold one image (fields: {', '.join(example)}), so "
                f"the images in {path} cannot stand in; give a JSON file of requests instead."
            )
        return [example | {fields[0]: base64.b64encode(f.read_bytes()).decode()} for f in files]
    try:
        text = path.read_text()
        if path.suffix == ".jsonl":
            bodies = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            bodies = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LoadTestError(
            f"{path}: {clause(err)}; give a JSON list of request bodies, JSON Lines (.jsonl, "
            "one body a line) or a folder of images."
        ) from err
    if not isinstance(bodies, list) or not bodies or not all(isinstance(b, dict) for b in bodies):
        raise LoadTestError(
            f"{path} holds no list of request bodies: give a JSON list of objects, each one "
            f"request as /v1/models/{name}/predict takes it (the examples at "
            f"/v1/models/{name}/examples show them)."
        )
    return bodies


def _is_image(value: object) -> bool:
    """Whether `value` is base64 text of a PNG or JPEG file (the first bytes tell)."""
    if not isinstance(value, str) or len(value) < 16:
        return False
    try:
        head = base64.b64decode(value[:16], validate=True)
    except ValueError:
        return False
    return head.startswith((b"\x89PNG", b"\xff\xd8\xff"))


def _check_first(url: str, body: dict[str, Any], headers: dict[str, str], source: Path) -> None:
    """Send the first request once: a body the server refuses is said before any load."""
    response = _send("POST", url, headers, json=body, timeout=30)
    if response.status_code != 200:
        raise LoadTestError(
            f"The first request of {source} was answered {response.status_code}: "
            f"{response.text[:300]}; fix the requests (the server's /docs shows their form)."
        )


def _run_locust(
    url: str, plan: LoadPlan, locustfile: Path, out_dir: Path, api_key: str | None
) -> None:
    command = [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", url, "--users", str(plan.users), "--spawn-rate", str(plan.spawn_rate),
        "--run-time", f"{int(plan.duration_s)}s", "--stop-timeout", "5",
        "--csv", str(out_dir / "locust"), "--html", str(out_dir / "report.html"),
        "--only-summary", "--exit-code-on-error", "0", "--loglevel", "WARNING",
    ]  # fmt: skip
    deadline = plan.duration_s + DEADLINE_SLACK_S
    with (out_dir / "locust.log").open("wb") as log:
        try:  # a deadline kills Locust and anything it started
            env = os.environ | ({KEY_VARIABLE: api_key} if api_key else {})
            code = run_in_session(
                command, deadline, stdout=log, stderr=subprocess.STDOUT, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"Locust overran its {deadline:.0f} s deadline and was killed; see "
                f"{out_dir / 'locust.log'}."
            ) from None
    if code != 0:
        tail = (out_dir / "locust.log").read_text(errors="replace")[-2000:]
        raise LoadTestError(f"Locust exited with {code}; its output ends with:\n{tail}")


def _read_stats(path: Path, url: str, model: str, plan: LoadPlan, budgets: Budgets) -> LoadResult:
    """The totals the locustfile wrote as Locust quit (`FINAL_STATS`)."""
    try:
        total = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise LoadTestError(
            f"Locust wrote no final statistics ({path}: {clause(err)}); see locust.log beside it."
        ) from err
    result = LoadResult(
        url=url,
        model=model,
        plan=plan,
        budgets=budgets,
        requests=int(total["requests"]),
        failures=int(total["failures"]),
        rps=float(total["rps"]),
        p50_ms=_ms(total["p50_ms"]),
        p99_ms=_ms(total["p99_ms"]),
    )
    result.misses = _misses(result, budgets)
    return result


def _ms(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _misses(result: LoadResult, budgets: Budgets) -> list[str]:
    misses = []
    if result.requests == 0:
        misses.append("no request completed")
    if not result.p99_ms <= budgets.p99_ms:  # NaN (no requests) misses too
        misses.append(f"p99 {result.p99_ms:.3g} ms > budget {budgets.p99_ms:,.10g} ms")
    if result.error_rate > budgets.max_error_rate:
        misses.append(f"error rate {result.error_rate:.2%} > budget {budgets.max_error_rate:.2%}")
    if result.rps < budgets.min_rps:
        misses.append(f"{result.rps:.1f} requests/s < budget {budgets.min_rps:,.10g}")
    return misses
