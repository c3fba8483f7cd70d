"""Registry hooks against real subprocesses and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelcycle.registry_hooks import (
    AliasMoved,
    CommandHook,
    GitHubDispatchHook,
    HookError,
    HookResult,
    hooks_from_config,
    run_hooks,
)

TOKEN = "ghp_s3cretTokenThatMustNeverLeak"

EVENT = AliasMoved(
    model="twins",
    alias="champion",
    version="4",
    previous_version="3",
    reason="better AUC",
    actor="ci",
    at="2025-01-02T03:04:05Z",
)

# Every argv item is a template, so the child script avoids braces (or would double them).
DUMP_ARGV_AND_ENV = (
    "import json, os, sys; "
    "open(sys.argv[1], 'w').write(json.dumps("
    "dict(argv=sys.argv[2:], event=os.environ.get('MODELCYCLE_EVENT'))))"
)


@dataclass
class Recorded:
    """What the fake GitHub saw, and what it answers."""

    status: int = 204
    body: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FakeGitHub:
    url: str
    recorded: Recorded


def _handler(recorded: Recorded) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            recorded.requests.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "json": json.loads(raw or b"null"),
                }
            )
            self.send_response(recorded.status)
            self.send_header("Content-Length", str(len(recorded.body)))
            self.end_headers()
            self.wfile.write(recorded.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGitHub]:
    """A fake GitHub API on 127.0.0.1, bypassing any proxy from the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    recorded = Recorded()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorded))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield FakeGitHub(f"http://127.0.0.1:{server.server_address[1]}", recorded)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- AliasMoved -----------------------------------------------------------------------------


def test_payload_has_every_field() -> None:
    assert EVENT.payload() == {
        "model": "twins",
        "alias": "champion",
        "version": "4",
        "previous_version": "3",
        "reason": "better AUC",
        "actor": "ci",
        "at": "2025-01-02T03:04:05Z",
    }


# --- CommandHook ----------------------------------------------------------------------------


def test_command_formats_placeholders_and_passes_event(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    hook = CommandHook(
        [
            sys.executable,
            "-c",
            DUMP_ARGV_AND_ENV,
            str(out),
            "{model}@{alias}",
            "v{version}",
            "was {previous_version}",
            "{{literal}}",
        ]
    )

    result = hook(EVENT)

    assert result == HookResult(hook=hook.describe(), ok=True, detail="exit code 0")
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["twins@champion", "v4", "was 3", "{literal}"]
    assert json.loads(seen["event"]) == EVENT.payload()


def test_command_previous_version_none_formats_empty(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    event = AliasMoved("twins", "champion", "1", None, "first", "ci", "2025-01-02T03:04:05Z")
    hook = CommandHook([sys.executable, "-c", DUMP_ARGV_AND_ENV, str(out), "[{previous_version}]"])

    assert hook(event).ok
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["[]"]
    assert json.loads(seen["event"])["previous_version"] is None


def test_command_nonzero_exit_reports_code_and_stderr() -> None:
    script = "import sys; print('first'); sys.stderr.write('boom: no model\\n'); sys.exit(3)"
    result = CommandHook([sys.executable, "-c", script])(EVENT)

    assert not result.ok
    assert "exit code 3" in result.detail
    assert "boom: no model" in result.detail


def test_command_timeout_is_reported_and_bounded() -> None:
    hook = CommandHook([sys.executable, "-c", "import time; time.sleep(5)"], timeout=0.5)

    start = time.monotonic()
    result = hook(EVENT)

    assert time.monotonic() - start < 4
    assert not result.ok
    assert "timed out after 0.5 s" in result.detail


def test_a_timed_out_command_takes_what_it_started_with_it(tmp_path: Path) -> None:
    # Only the script was killed: its `sleep` lived on, re-parented, holding the script's
    # output open, so the hook waited out the sleep too.
    pid_file = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pid_file}; wait"
    start = time.monotonic()
    result = CommandHook(["/bin/sh", "-c", script], timeout=0.5)(EVENT)
    assert not result.ok and "timed out after 0.5 s" in result.detail
    assert time.monotonic() - start < 5
    child = int(pid_file.read_text())
    for _ in range(50):  # the kernel reaps it a moment after the kill
        if not Path(f"/proc/{child}").exists() or "Z" in _state(child):
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "sleep still runs"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def test_a_command_s_long_error_output_is_cut_to_its_end() -> None:
    # One stderr line of megabytes was kept whole: printing it took minutes (Rich wraps it).
    script = "import sys; sys.stderr.write('x' * 2_000_000 + ' the end'); sys.exit(1)"
    result = CommandHook([sys.executable, "-c", script])(EVENT)
    assert not result.ok and result.detail.endswith("x the end")
    assert len(result.detail) < 1100 and "exit code 1: … " in result.detail


def test_a_secret_passed_as_an_argument_is_masked_where_the_hook_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MY_TOKEN", TOKEN)  # e.g. command: [notify.sh, "${oc.env:MY_TOKEN}"]
    hook = CommandHook(["/bin/sh", "-c", "exit 2", TOKEN])
    result = hook(EVENT)
    assert TOKEN not in hook.describe() and TOKEN not in result.hook
    assert result.hook == "command: /bin/sh -c exit 2 ***"


def test_command_not_found(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-notify.sh")
    result = CommandHook([missing, "{version}"])(EVENT)

    assert not result.ok
    assert result.detail.startswith(f"command not found: {missing}")


def test_command_unknown_placeholder_names_it() -> None:
    with pytest.raises(HookError, match=r"unknown placeholder \{modle\}.*\{model\}"):
        CommandHook(["echo", "{modle}"])


@pytest.mark.parametrize("command", [[], ["echo", 3], "echo hi"])
def test_command_rejects_non_argv(command: Any) -> None:
    with pytest.raises(HookError, match="list of strings"):
        CommandHook(command)


def test_command_rejects_broken_template() -> None:
    with pytest.raises(HookError, match="literal braces"):
        CommandHook(["echo", "{oops"])


# --- GitHubDispatchHook ---------------------------------------------------------------------


def test_github_posts_dispatch(github: FakeGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MC_TEST_TOKEN", TOKEN)
    hook = GitHubDispatchHook("octo/models", token_env="MC_TEST_TOKEN", api_url=github.url + "/")

    result = hook(EVENT)

    assert result == HookResult(hook="github: octo/models", ok=True, detail="HTTP 204")
    (request,) = github.recorded.requests
    assert request["method"] == "POST"
    assert request["path"] == "/repos/octo/models/dispatches"
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["accept"] == "application/vnd.github+json"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["x-github-api-version"] == "2022-11-28"
    assert headers["user-agent"] == "modelcycle"
    assert request["json"] == {
        "event_type": "model-alias-moved",
        "client_payload": EVENT.payload(),
    }


def test_github_401_reports_status_without_token(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    github.recorded.status = 401
    github.recorded.body = json.dumps({"message": f"Bad credentials {TOKEN}"}).encode()
    hook = GitHubDispatchHook("octo/models", api_url=github.url)

    with caplog.at_level(logging.DEBUG, logger="modelcycle"):
        (result,) = run_hooks([hook], EVENT)

    assert not result.ok
    assert "HTTP 401" in result.detail
    assert "Bad credentials" in result.detail
    assert TOKEN not in result.detail
    assert TOKEN not in caplog.text
    assert "HTTP 401" in caplog.text


def test_github_long_error_body_is_truncated(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    github.recorded.status = 422
    github.recorded.body = b"x" * 10_000
    result = GitHubDispatchHook("octo/models", api_url=github.url)(EVENT)

    assert not result.ok
    assert "HTTP 422" in result.detail
    assert result.detail.endswith("(truncated)")
    assert len(result.detail) < 1000


def test_github_redirect_is_not_followed(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    github.recorded.status = 302
    result = GitHubDispatchHook("octo/models", api_url=github.url)(EVENT)

    assert not result.ok
    assert "HTTP 302" in result.detail and "not followed" in result.detail
    assert "set api_url to the address that answers" in result.detail
    assert len(github.recorded.requests) == 1


def test_github_missing_token_names_env_var(
    github: FakeGitHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MC_TEST_TOKEN", raising=False)
    hook = GitHubDispatchHook("octo/models", token_env="MC_TEST_TOKEN", api_url=github.url)

    result = hook(EVENT)

    assert not result.ok
    assert "MC_TEST_TOKEN" in result.detail
    assert github.recorded.requests == []


def test_github_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    hook = GitHubDispatchHook("octo/models", api_url=f"http://127.0.0.1:{_closed_port()}")

    result = hook(EVENT)

    assert not result.ok
    assert "could not reach" in result.detail
    assert TOKEN not in result.detail


def test_github_an_answer_sent_a_byte_at_a_time_is_given_up_on_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # urllib's timeout bounds each read: 3 s took 1 min 51 s of an answer trickled a byte
    # every 2 s, then counted as ok.
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            answer = b"HTTP/1.1 204 No Content\r\nX-Slow: " + b"x" * 100 + b"\r\n\r\n"
            for byte in answer:
                if stop.wait(0.3):
                    return
                connection.sendall(bytes([byte]))

    server = threading.Thread(target=trickle, daemon=True)
    server.start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        hook = GitHubDispatchHook("octo/models", api_url=url, timeout=1.0)
        start = time.monotonic()
        result = hook(EVENT)
        took = time.monotonic() - start
    finally:
        stop.set()
        listener.close()
    assert not result.ok and "no whole answer" in result.detail and "within 1 s" in result.detail
    assert took < 3


@pytest.mark.parametrize("repository", ["octo", "octo/models/extra", "/models", "octo/", "a b/c"])
def test_github_bad_repository(repository: str) -> None:
    with pytest.raises(HookError, match="owner/name"):
        GitHubDispatchHook(repository)


def test_github_rejects_non_http_api_url() -> None:
    with pytest.raises(HookError, match="https://"):
        GitHubDispatchHook("octo/models", api_url="file:///etc")
    # plain http would carry the token over the network; to this machine it stays here
    with pytest.raises(HookError, match=r"http:// only to this machine"):
        GitHubDispatchHook("octo/models", api_url="http://ghe.example.com/api/v3")
    for local in ("http://127.0.0.1:8080", "http://localhost/api", "http://[::1]:9000"):
        GitHubDispatchHook("octo/models", api_url=local)


def test_a_command_hook_s_output_does_not_carry_secrets_into_the_log(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A hook script run with `set -x` prints the token it passes to curl.
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("MODELCYCLE_API_KEY", "s3cret-api-key")
    monkeypatch.setenv("SHORT_TOKEN", "abc")  # too short to redact without mangling text
    script = 'echo "curl -H $GITHUB_TOKEN key $MODELCYCLE_API_KEY abc" >&2; exit 3'
    result = CommandHook(["/bin/sh", "-c", script])(EVENT)
    assert not result.ok and "exit code 3" in result.detail
    assert TOKEN not in result.detail and "s3cret-api-key" not in result.detail
    assert "curl -H *** key *** abc" in result.detail


# --- hooks_from_config ----------------------------------------------------------------------


def test_hooks_from_config_both_forms() -> None:
    hooks = hooks_from_config(
        [
            {"command": ["./notify.sh", "{version}"], "timeout": 5},
            {
                "github": "octo/models",
                "event_type": "champion-moved",
                "token_env": "GH_PAT",
                "api_url": "https://ghe.example.com/api/v3",
            },
            {"github": "octo/other"},
        ]
    )

    assert hooks == [
        CommandHook(["./notify.sh", "{version}"], timeout=5),
        GitHubDispatchHook(
            "octo/models",
            event_type="champion-moved",
            token_env="GH_PAT",
            api_url="https://ghe.example.com/api/v3",
        ),
        GitHubDispatchHook("octo/other"),
    ]
    assert [h.describe() for h in hooks] == [
        "command: ./notify.sh {version}",
        "github: octo/models",
        "github: octo/other",
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"webhook": "https://example.com"},
        {"command": ["true"], "github": "octo/models"},
        {"command": ["true"], "retries": 3},
        {"github": "octo/models", "token": TOKEN},
        {},
    ],
)
def test_hooks_from_config_bad_form_lists_valid_forms(item: dict[str, Any]) -> None:
    with pytest.raises(HookError, match=r'\{"command": \[.*\{"github": "owner/name"'):
        hooks_from_config([item])


def test_hooks_from_config_command_string_suggests_list() -> None:
    with pytest.raises(HookError, match=r"\['./notify.sh', '\{version\}'\]"):
        hooks_from_config([{"command": "./notify.sh {version}"}])


def test_hooks_from_config_bad_timeout() -> None:
    with pytest.raises(HookError, match="positive number of seconds"):
        hooks_from_config([{"command": ["true"], "timeout": "soon"}])


# --- run_hooks ------------------------------------------------------------------------------


class Exploding:
    def describe(self) -> str:
        return "exploding"

    def __call__(self, event: AliasMoved) -> HookResult:
        raise ValueError("kaboom")


def test_run_hooks_continues_after_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.json"
    failing = CommandHook([sys.executable, "-c", "raise SystemExit(2)"])
    succeeding = CommandHook([sys.executable, "-c", DUMP_ARGV_AND_ENV, str(out), "{alias}"])

    with caplog.at_level(logging.WARNING, logger="modelcycle"):
        results = run_hooks([failing, Exploding(), succeeding], EVENT)

    assert [r.ok for r in results] == [False, False, True]
    assert results[1] == HookResult(hook="exploding", ok=False, detail="ValueError: kaboom")
    assert json.loads(out.read_text())["argv"] == ["champion"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "kaboom" in caplog.text


def test_run_hooks_empty() -> None:
    assert run_hooks([], EVENT) == []


def test_the_readme_s_hook_override_builds_both_hooks() -> None:
    from modelcycle.config import compose_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"`modelcycle promote twins '(registry\.hooks=[^']+)'`", readme)
    assert found is not None, "the README shows no hook override"
    items = compose_config([found[1]]).registry.hooks
    command, github = hooks_from_config(items)
    assert isinstance(command, CommandHook) and isinstance(github, GitHubDispatchHook)
    assert command.command == ["./notify.sh", "{model}", "{version}"]
    assert github.repository == "owner/repo"
