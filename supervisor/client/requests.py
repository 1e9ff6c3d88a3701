"""The control socket's requests, written once for both clients: what each sends and
what it takes from the answer. ``Client`` and ``AsyncClient`` only differ in how they
wait (a blocking socket, or anyio), so each of their methods is one line over this
table; a new request is added here and gets the same shape in both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

R = TypeVar("R")

ProgressListener = Callable[[dict[str, Any]], None]
"""Hears each ``progress`` notification for a call: ``{"id", "progress", "total"?,
"message"?, "skipped"?}`` (protocol/SPEC.md section 14)."""


@dataclass(frozen=True, slots=True)
class Request(Generic[R]):
    method: str
    params: dict[str, Any] | None
    read: Callable[[Any], R]
    """What the caller gets from the answer's result."""


def _as_is(result: Any) -> Any:
    return result


def _record(result: Any) -> dict[str, Any]:
    record: dict[str, Any] = result
    return record


def _nothing(result: Any) -> None:
    return None


def _lines(result: Any) -> list[str]:
    lines: list[str] = result["lines"]
    return lines


def _text(result: Any) -> str:
    text: str = result["text"]
    return text


def _opt(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def call_params(plugin: str, method: str, params: Any, timeout: float | None,
                progress: bool = False) -> dict[str, Any]:
    p: dict[str, Any] = {"plugin": plugin, "method": method}
    if params is not None:
        p["params"] = params
    if timeout is not None:
        p["timeout"] = timeout
    if progress:  # only then does the daemon send progress notifications for it
        p["progress"] = True
    return p


def call(plugin: str, method: str, params: Any, timeout: float | None,
         progress: bool = False) -> Request[Any]:
    return Request("call", call_params(plugin, method, params, timeout, progress), _as_is)


def notify(plugin: str, method: str, params: Any) -> Request[None]:
    return Request("notify", call_params(plugin, method, params, None), _nothing)


def status() -> Request[dict[str, Any]]:
    return Request("status", None, _record)


def lifecycle(verb: str, plugin: str, wait: float | None) -> Request[dict[str, Any]]:
    """start, stop, restart or load (``plugin`` is then a name or a path)."""
    return Request(verb, _opt(plugin=plugin, wait=wait), _record)


def unload(plugin: str) -> Request[dict[str, Any]]:
    return Request("unload", {"plugin": plugin}, _record)


def reload(dry_run: bool = False) -> Request[dict[str, Any]]:
    return Request("reload", {"dry_run": True} if dry_run else None, _record)


def logs(plugin: str, lines: int) -> Request[list[str]]:
    return Request("logs", {"plugin": plugin, "lines": lines}, _lines)


def metrics() -> Request[str]:
    return Request("metrics", None, _text)


def filters(plugins: list[str] | None, kinds: list[str] | None,
            since: float | None = None) -> dict[str, Any]:
    """The params of ``subscribe``; ``since``: replay the daemon's kept events from then."""
    p: dict[str, Any] = {} if since is None else {"since": since}
    if plugins:
        p["plugins"] = list(plugins)
    if kinds:
        p["kinds"] = list(kinds)
    return p
