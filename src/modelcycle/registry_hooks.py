"""Hooks that run when a model-registry alias moves, so CI or a script can react.

Two kinds of hook exist: a local command (argv, no shell) and a GitHub
``repository_dispatch`` event. Hooks only report: `run_hooks` never raises, so a failing
hook can never undo an alias move.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from modelcycle.processes import run_in_session

log = logging.getLogger(__name__)
T = TypeVar("T")

PLACEHOLDERS = ("model", "alias", "version", "previous_version")
"""Names a `CommandHook` argument may use as ``{name}``."""

_REPOSITORY = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_STDERR_LINES = 5
#: Most characters of a command's error output kept (one line of megabytes froze the report).
_STDERR_CHARS = 1000
_BODY_CHARS = 500
_VALID_FORMS = (
    '{"command": ["argv0", "arg", ...], "timeout": 60} or '
    '{"github": "owner/name", "event_type": ..., "token_env": ..., "api_url": ..., "timeout": ...}'
)


class HookError(RuntimeError):
    """A hook is misconfigured (raised when it is built, never while hooks run)."""


@dataclass(frozen=True)
class AliasMoved:
    """A registry alias now points at another model version.

    Attributes:
        model: Registered model name.
        alias: The alias that moved, e.g. ``"champion"``.
        version: The version the alias points at now.
        previous_version: The version it pointed at before; None if the alias is new.
        reason: Why it moved, as given by the actor.
        actor: Who moved it.
        at: When, as ISO-8601 UTC.
    """

    model: str
    alias: str
    version: str
    previous_version: str | None
    reason: str
    actor: str
    at: str

    def payload(self) -> dict[str, str | None]:
        """Return the event as a JSON-ready mapping (the same keys as the attributes)."""
        return asdict(self)


@dataclass(frozen=True)
class HookResult:
    """What one hook did.

    Attributes:
        hook: The hook's description, e.g. ``"command: ./notify.sh"``.
        ok: Whether it succeeded.
        detail: Exit code or HTTP status on success, else what went wrong.
    """

    hook: str
    ok: bool
    detail: str


class Hook(Protocol):
    """Anything that reacts to an `AliasMoved` event and reports a `HookResult`."""

    def describe(self) -> str:
        """Return a short description used in results and logs."""
        ...

    def __call__(self, event: AliasMoved) -> HookResult:
        """React to the event; report failures in the result rather than raising."""
        ...


@dataclass(frozen=True)
class CommandHook:
    """Run a local command (no shell) with the event in ``MODELCYCLE_EVENT``.

    Attributes:
        command: argv; items may hold ``{model}``, ``{alias}``, ``{version}`` and
            ``{previous_version}`` (empty when None); write ``{{`` and ``}}`` for literal braces.
        timeout: Seconds before the command is killed.
    """

    command: list[str]
    timeout: float = 60.0

    def __post_init__(self) -> None:
        """Check argv and placeholders now, so a bad hook fails when it is configured."""
        command = self.command
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(arg, str) for arg in command)
        ):
            raise HookError(
                f"command hook needs a non-empty list of strings (argv), got {self.command!r}"
            )
        for arg in self.command:
            _check_placeholders(arg)
        _check_timeout(self.timeout, "command hook")

    def describe(self) -> str:
        """Return ``"command: <argv>"``, secret values masked (a token passed as an argument)."""
        return _masked(f"command: {' '.join(self.command)}", os.environ)

    def __call__(self, event: AliasMoved) -> HookResult:
        """Run the command; a non-zero exit, a timeout or a missing program give ok=False.

        The command runs in a session of its own, so a timeout kills what it started too (a
        script's `sleep` kept running, and kept its output open).
        """
        values = {name: getattr(event, name) or "" for name in PLACEHOLDERS}
        argv = [arg.format_map(values) for arg in self.command]
        env = {**os.environ, "MODELCYCLE_EVENT": json.dumps(event.payload())}
        try:
            done = run_in_session(
                argv,
                self.timeout,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
        except FileNotFoundError:
            return self._result(False, f"command not found: {argv[0]} (check PATH or the path)")
        except subprocess.TimeoutExpired:
            return self._result(False, f"timed out after {self.timeout:g} s and was killed")
        except OSError as exc:
            return self._result(False, f"could not run {argv[0]}: {exc}")
        # a hook run with `set -x` prints its token
        detail = _masked(_exit_detail(done.returncode, done.stderr), env)
        return self._result(done.returncode == 0, detail)

    def _result(self, ok: bool, detail: str) -> HookResult:
        return HookResult(hook=self.describe(), ok=ok, detail=detail)


@dataclass(frozen=True)
class GitHubDispatchHook:
    """Send a ``repository_dispatch`` event to a GitHub repository.

    The token needs write access to the repository's contents (fine-grained:
    "Contents: read and write"). It is read from the environment at call time and never
    appears in results or logs.

    Attributes:
        repository: ``"owner/name"``.
        event_type: The dispatch ``event_type`` workflows filter on.
        token_env: Name of the environment variable holding the token.
        api_url: GitHub API root (change it for GitHub Enterprise).
        timeout: Seconds to wait for GitHub.
    """

    repository: str
    event_type: str = "model-alias-moved"
    token_env: str = "GITHUB_TOKEN"
    api_url: str = "https://api.github.com"
    timeout: float = 10.0

    def __post_init__(self) -> None:
        """Check the repository, event type, token variable and API URL."""
        name = self.repository.split("/")[-1] if isinstance(self.repository, str) else ""
        if (
            not isinstance(self.repository, str)
            or not _REPOSITORY.fullmatch(self.repository)
            or name in {".", ".."}
        ):
            raise HookError(
                f"github hook repository must look like 'owner/name', got {self.repository!r}"
            )
        if not isinstance(self.event_type, str) or not 0 < len(self.event_type) <= 100:
            raise HookError(
                f"github hook event_type must be 1-100 characters, got {self.event_type!r}"
            )
        if not isinstance(self.token_env, str) or not self.token_env:
            raise HookError(
                f"github hook token_env must name an environment variable, got {self.token_env!r}"
            )
        if not isinstance(self.api_url, str) or not (
            self.api_url.startswith("https://") or _loopback_http(self.api_url)
        ):
            raise HookError(
                f"github hook api_url must start with https:// (http:// only to this machine: "
                f"the token travels in the request), got {self.api_url!r}"
            )
        _check_timeout(self.timeout, "github hook")

    @property
    def url(self) -> str:
        """The dispatches endpoint."""
        return f"{self.api_url.rstrip('/')}/repos/{self.repository}/dispatches"

    def describe(self) -> str:
        """Return ``"github: owner/name"``."""
        return f"github: {self.repository}"

    def __call__(self, event: AliasMoved) -> HookResult:
        """POST the event; ok when GitHub answers 2xx (it answers 204)."""
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            return self._result(
                False,
                f"environment variable {self.token_env} is not set; set it to a GitHub token "
                f"with contents write access to {self.repository}",
            )
        body = {"event_type": self.event_type, "client_payload": event.payload()}
        log.debug("POST %s (event_type=%s)", self.url, self.event_type)
        try:
            status = _within(self.timeout, lambda: _post_json(self.url, body, token, self.timeout))
        except TimeoutError:  # urllib's timeout bounds each read: a byte a second never ends
            return self._result(
                False, f"no whole answer from {self.url} within {self.timeout:g} s; gave up"
            )
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:  # _NoRedirect: the token is not sent on
                where = exc.headers.get("Location", "elsewhere") if exc.headers else "elsewhere"
                detail = (
                    f"HTTP {exc.code} from {self.url}: a redirect to {where}, not followed "
                    "(it would carry the token); set api_url to the address that answers"
                )
            else:
                detail = f"HTTP {exc.code} from {self.url}: {_error_body(exc)}"
            return self._result(False, _redact(detail, token))
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return self._result(False, _redact(f"could not reach {self.url}: {reason}", token))
        return self._result(True, f"HTTP {status}")

    def _result(self, ok: bool, detail: str) -> HookResult:
        return HookResult(hook=self.describe(), ok=ok, detail=detail)


def hooks_from_config(items: Sequence[Mapping[str, Any]]) -> list[Hook]:
    """Build hooks from config items.

    Args:
        items: Each ``{"command": [...], "timeout": ...}`` or
            ``{"github": "owner/name", "event_type": ..., "token_env": ..., "api_url": ...,
            "timeout": ...}``; all keys but ``command``/``github`` are optional.

    Returns:
        The hooks, in order.

    Raises:
        HookError: An item has neither or both kinds, an unknown key, or a bad value.
    """
    return [_hook_from_item(index, item) for index, item in enumerate(items)]


def run_hooks(hooks: Sequence[Hook], event: AliasMoved) -> list[HookResult]:
    """Run every hook in order; failures are logged at WARNING and returned, never raised.

    Args:
        hooks: The hooks to run.
        event: The alias move they react to.

    Returns:
        One result per hook, in order.
    """
    results = []
    for hook in hooks:
        result = _run_one(hook, event)
        if not result.ok:
            log.warning("hook %s failed: %s", result.hook, result.detail)
        results.append(result)
    return results


def _run_one(hook: Hook, event: AliasMoved) -> HookResult:
    try:
        return hook(event)
    except Exception as exc:  # a hook must never undo an alias move
        return HookResult(hook=_describe(hook), ok=False, detail=f"{type(exc).__name__}: {exc}")


def _describe(hook: Hook) -> str:
    try:
        return hook.describe()
    except Exception:
        return repr(hook)


def _hook_from_item(index: int, item: Mapping[str, Any]) -> Hook:
    if not isinstance(item, Mapping):
        raise HookError(f"hook #{index} must be a mapping, got {item!r}; use {_VALID_FORMS}")
    kinds = {"command", "github"} & set(item)
    if len(kinds) != 1:
        raise HookError(
            f"hook #{index} must have exactly one of 'command' or 'github', got keys "
            f"{sorted(item)}; use {_VALID_FORMS}"
        )
    if "command" in kinds:
        _check_keys(index, item, "command", {"timeout"})
        return CommandHook(_argv(index, item["command"]), **_options(item, {"timeout"}))
    options = {"event_type", "token_env", "api_url", "timeout"}
    _check_keys(index, item, "github", options)
    return GitHubDispatchHook(item["github"], **_options(item, options))


def _check_keys(index: int, item: Mapping[str, Any], kind: str, options: set[str]) -> None:
    unknown = sorted(set(item) - options - {kind})
    if unknown:
        raise HookError(
            f"hook #{index} ({kind}) has unknown keys {unknown}; allowed besides {kind!r}: "
            f"{sorted(options)}; use {_VALID_FORMS}"
        )


def _options(item: Mapping[str, Any], options: set[str]) -> dict[str, Any]:
    return {key: item[key] for key in options & set(item)}


def _argv(index: int, value: Any) -> list[str]:
    if isinstance(value, str):
        raise HookError(
            f"hook #{index} command must be a list of arguments, not the string {value!r}; "
            f"write it as {value.split()!r}"
        )
    if not isinstance(value, Sequence):
        raise HookError(f"hook #{index} command must be a list of arguments, got {value!r}")
    return list(value)


def _check_placeholders(arg: str) -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(arg) if name is not None]
    except ValueError as exc:
        raise HookError(
            f"command argument {arg!r} is not a valid template ({exc}); "
            "write literal braces as '{{' and '}}'"
        ) from exc
    for name in fields:
        if name not in PLACEHOLDERS:
            raise HookError(
                f"unknown placeholder {{{name}}} in command argument {arg!r}; "
                f"use one of {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )


def _check_timeout(timeout: object, what: str) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise HookError(f"{what} timeout must be a positive number of seconds, got {timeout!r}")


def _exit_detail(code: int, stderr: str) -> str:
    detail = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    tail = "\n".join(stderr.strip().splitlines()[-_STDERR_LINES:])
    if len(tail) > _STDERR_CHARS:
        tail = "… " + tail[-_STDERR_CHARS:]
    return f"{detail}: {tail}" if code != 0 and tail else detail


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would resend the Authorization header to the new host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Return None so the 3xx surfaces as an HTTPError."""
        return None


_OPENER = urllib.request.build_opener(_NoRedirect())


def _post_json(url: str, body: Mapping[str, Any], token: str, timeout: float) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "modelcycle",
        },
    )
    with _OPENER.open(request, timeout=timeout) as response:
        return int(response.status)


def _within(seconds: float, call: Callable[[], T]) -> T:
    """`call()`'s result, or TimeoutError once `seconds` pass (its thread is left to end)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller below
            failure.append(exc)

    worker = threading.Thread(target=run, name="github-hook", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if failure:
        raise failure[0]
    return outcome[0]


def _error_body(error: urllib.error.HTTPError) -> str:
    try:
        text = error.read().decode("utf-8", "replace").strip()
    except OSError as exc:
        return f"(could not read the response body: {exc})"
    return text if len(text) <= _BODY_CHARS else text[:_BODY_CHARS] + "… (truncated)"


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***")


def _masked(text: str, env: Mapping[str, str]) -> str:
    """`text` with the value of every secret-named variable of `env` replaced by ***."""
    for secret in _secret_values(env):
        text = _redact(text, secret)
    return text


#: Environment variables whose values a hook's output must not carry into the log.
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIAL|PRIVATE_KEY", re.I)


def _secret_values(env: Mapping[str, str]) -> list[str]:
    """Values of secret-named variables in `env` (8 characters or more: no common words)."""
    values = {v.strip() for k, v in env.items() if _SECRET_NAME.search(k) and len(v.strip()) >= 8}
    return sorted(values, key=len, reverse=True)  # a longer secret first, if one holds another


def _loopback_http(url: str) -> bool:
    """An http:// URL to this machine (a local relay or a test), where no token leaves it."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.scheme == "http" and parsed.hostname in ("127.0.0.1", "localhost", "::1")
