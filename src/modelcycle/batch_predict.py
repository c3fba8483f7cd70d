"""Score a file of requests offline, through the server's own app, in this process.

Each input goes through the same route as a request to `modelcycle serve`: the same
validation (and its 422 messages), decoding, micro-batching, ONNX session and answer. No
socket is opened; the app runs on an in-process ASGI transport, with as many requests in
flight as two batches hold, so that batches form. What each input got is written, in
input order, one JSON line each: an answer, or the refusal and its reason. Nothing is
captured (captures are for live traffic, which drift checks compare).

Inputs: a JSON Lines file (`.jsonl`, one request body per line, as the HTTP API takes it),
a JSON file holding a list of request bodies, or, for models that take files (images), a
folder of files or one file, each sent as its bytes with its type.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Inputs scored between two writes of the output (bounds memory on large files).
CHUNK = 1024


class PredictInputError(ValueError):
    """An input file or folder that cannot be read as requests; says what to give instead."""


@dataclass(frozen=True)
class Input:
    """One request to score: where it came from, its body and its content type."""

    label: str  # "line 3", or a file's path relative to the folder
    body: bytes
    content_type: str


@dataclass
class Scored:
    """What a batch prediction did: answered and refused counts, and why inputs were refused."""

    out: Path
    answered: int = 0
    refused: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


def read_inputs(source: Path) -> Iterator[Input]:
    """The requests in `source` (see the module's docstring), in order; checked before any.

    Raises:
        PredictInputError: `source` is missing or an empty folder, or a JSON file that is
            not a list.
    """
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PredictInputError(f"{source}: an empty folder; give files to score.")
        return (_file(path, str(path.relative_to(source))) for path in files)
    if not source.is_file():
        raise PredictInputError(
            f"{source}: no such file or folder; give a .jsonl file of request bodies, a .json "
            "list of them, or a folder of files (images) to score."
        )
    if source.suffix.lower() == ".jsonl":
        return _lines(source)
    if source.suffix.lower() != ".json":
        return iter([_file(source, source.name)])
    try:
        bodies = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PredictInputError(f"{source}: not JSON ({err}).") from err
    if not isinstance(bodies, list):
        raise PredictInputError(
            f"{source}: a .json file holds a list of request bodies; for one request, put it "
            "in a list, [{...}], or give a .jsonl file (one body per line)."
        )
    return (
        Input(f"item {n}", json.dumps(body).encode(), "application/json")
        for n, body in enumerate(bodies, 1)
    )


def _file(path: Path, label: str) -> Input:
    """A file sent as its bytes, its type from its name."""
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Input(label, path.read_bytes(), kind)


def _lines(source: Path) -> Iterator[Input]:
    """Each non-empty line as a JSON body; one that is not JSON is refused by the app (422)."""
    with source.open("rb") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                yield Input(f"line {n}", line.strip(), "application/json")


def predict(
    app: Any,
    name: str,
    inputs: Iterator[Input],
    out: Path,
    in_flight: int,
    progress: Callable[[int], None] = lambda n: None,
) -> Scored:
    """Score `inputs` with model `name` of `app` (a FastAPI app); write `out` (JSON Lines).

    `progress` is called with the count of inputs scored after each chunk.
    """
    return asyncio.run(_predict(app, name, inputs, out, in_flight, progress))


async def _predict(
    app: Any,
    name: str,
    inputs: Iterator[Input],
    out: Path,
    in_flight: int,
    progress: Callable[[int], None],
) -> Scored:
    import httpx

    scored = Scored(out)
    room = asyncio.Semaphore(in_flight)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://modelcycle", timeout=None
        ) as client,
    ):

        async def one(item: Input) -> dict[str, Any]:
            async with room:
                answer = await client.post(
                    f"/v1/models/{name}/predict",
                    content=item.body,
                    headers={"Content-Type": item.content_type},
                )
            line: dict[str, Any] = {"input": item.label, "status": answer.status_code}
            said = _json_or_text(answer)
            if answer.status_code == 200:
                line["answer"] = said
            else:
                reason = said.get("detail", said) if isinstance(said, dict) else said
                line["error"] = reason
            return line

        with out.open("w", encoding="utf-8") as written:
            done = 0
            for chunk in _chunks(inputs, CHUNK):
                for line in await asyncio.gather(*(one(item) for item in chunk)):
                    written.write(json.dumps(line) + "\n")
                    if line["status"] == 200:
                        scored.answered += 1
                    else:
                        scored.refused += 1
                        scored.reasons[f"{line['status']}: {_reason(line['error'])[:200]}"] += 1
                done += len(chunk)
                progress(done)
    return scored


def _reason(error: Any) -> str:
    """A refusal's detail in one line: validation errors as `field: message; ...`."""
    if isinstance(error, list) and all(isinstance(e, dict) and "msg" in e for e in error):
        return "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', [])) or 'body'}: {e['msg']}"
            for e in error
        )
    return str(error)


def _json_or_text(answer: Any) -> Any:
    try:
        return answer.json()
    except ValueError:
        return answer.text


def _chunks(items: Iterator[Input], size: int) -> Iterator[list[Input]]:
    chunk: list[Input] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
