"""``pipevisor status|call|start|stop|restart|load|unload|reload|logs|events``: the daemon's
control commands, thin wrappers over :class:`pipevisor.supervisor.client.Client`.

Scripts rely on two things here, so both are stable and documented in
docs/cli.md: the exit codes (``EXIT_*`` below) and ``--json`` output (one JSON
document on stdout; for ``logs --follow`` and ``events``, one JSON object per
line). Errors always go to stderr, as ``pipevisor: <message>`` (or a JSON
``{"error": ...}`` line with ``--json``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import orjson

from pipevisor.protocol import ErrorCode
from pipevisor.supervisor.client import (
    AccessDenied,
    Client,
    ControlError,
    DaemonBusy,
    DaemonNotRunning,
    EventsLagged,
    UntrustedDaemon,
)
from pipevisor.supervisor.errors import CallError, CallTimeout, PipevisorError
from pipevisor.supervisor.text import printable

EXIT_OK = 0
EXIT_ERROR = 1
"""The call or command got an error answer (the plugin's, or one not listed below)."""
EXIT_USAGE = 2
"""Bad command line or bad input (click's own usage errors use 2 as well)."""
EXIT_NO_DAEMON = 3
"""Nothing answers on the control socket, or the daemon went away mid-command."""
EXIT_UNKNOWN_PLUGIN = 4
EXIT_TIMEOUT = 5
EXIT_UNAVAILABLE = 6
"""The plugin is loaded but not serving (stopped, failed, starting, restarting)."""
EXIT_BUSY = 7
"""The daemon runs but refused the connection or the request for lack of room (every
control connection in use, out of file descriptors, ...): nothing was done, retry."""
EXIT_FORBIDDEN = 8
"""The daemon refused this client, or the client refused the socket's owner."""
EXIT_INTERRUPTED = 130

_UNAVAILABLE = {ErrorCode.PLUGIN_NOT_READY, ErrorCode.PLUGIN_STOPPED, ErrorCode.PLUGIN_CRASHED,
                ErrorCode.CONNECTION_CLOSED, ErrorCode.OVER_LIMIT}

F = TypeVar("F", bound=Callable[..., Any])


def socket_option(fn: F) -> F:
    return click.option(
        "--socket", "socket_path", envvar="PIPEVISOR_SOCKET", default=None, metavar="PATH",
        help="Control socket of the daemon [env PIPEVISOR_SOCKET; default: "
             "$XDG_RUNTIME_DIR/pipevisor/control.sock]")(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable JSON on stdout.")(fn)


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 if sys.stdout.isatty() else 0,
                        default=str).decode()


def _fail(code: int, message: str, as_json: bool, error: dict[str, Any] | None = None) -> NoReturn:
    if as_json:
        click.echo(orjson.dumps({"error": error or {"message": message}, "exit": code},
                                default=str).decode(), err=True)
    else:
        click.echo(f"pipevisor: {printable(message)}", err=True)
    sys.exit(code)


def exit_code_for(exc: CallError) -> int:
    if isinstance(exc, ControlError):
        return EXIT_USAGE if exc.code == ErrorCode.INVALID_PARAMS else EXIT_ERROR
    if isinstance(exc, CallTimeout):
        return EXIT_TIMEOUT
    if exc.code == ErrorCode.UNKNOWN_PLUGIN:
        return EXIT_UNKNOWN_PLUGIN
    if exc.code in _UNAVAILABLE:
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


def _with_client(socket_path: str | None, as_json: bool, work: Callable[[Client], Any]) -> Any:
    """Run ``work`` with a connected client, turning every failure into a message and
    a documented exit code."""
    try:
        with Client(socket_path) as client:
            return work(client)
    except (AccessDenied, UntrustedDaemon) as exc:
        _fail(EXIT_FORBIDDEN, str(exc), as_json,
              {"message": str(exc), "socket": exc.socket_path, "reason": "forbidden"})
    except DaemonBusy as exc:
        _fail(EXIT_BUSY, f"{exc} (nothing was done)", as_json,
              {"message": str(exc), "socket": exc.socket_path, "reason": "busy"})
    except DaemonNotRunning as exc:
        _fail(EXIT_NO_DAEMON, f"{exc} (is `pipevisor run` running? --socket or "
                              "PIPEVISOR_SOCKET select another daemon)", as_json,
              {"message": str(exc), "socket": exc.socket_path})
    except CallError as exc:
        _fail(exit_code_for(exc), f"{exc.error.message} [{exc.code}]", as_json,
              exc.error.to_json())
    except PipevisorError as exc:
        _fail(EXIT_ERROR, str(exc), as_json)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


# ================================================================ status


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _memory(rss: int | None) -> str:
    if rss is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if rss >= size:
            return f"{rss / size:.1f}{unit}"
    return f"{rss}B"


def _last_exit(info: dict[str, Any] | None) -> str:
    if not info:
        return "-"
    if info.get("signal"):
        return f"signal {info['signal']}"
    if info.get("returncode") is not None:
        return f"code {info['returncode']}"
    return str(info.get("reason") or info.get("error") or "?")[:20]


def _versions(p: dict[str, Any]) -> str:
    parts = []
    if p.get("plugin_version"):
        parts.append(f"v{p['plugin_version']}")
    if p.get("protocol_version"):
        parts.append(f"proto {p['protocol_version']}")
    elif p.get("mode") == "raw":
        parts.append("raw")
    return " ".join(parts) or "-"


def _degradations(p: dict[str, Any]) -> str:
    items = p.get("degradations") or []
    return "; ".join(f"{d.get('method') or '*'}: {d.get('reason')}" for d in items) or "-"


def render_status(status: dict[str, Any]) -> str:
    daemon = status.get("daemon", {})
    header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MEMORY", "CPU",
              "VERSIONS", "DEGRADED"]
    rows = [header]
    for p in status.get("plugins", []):
        cpu = p.get("cpu_percent")
        rows.append([
            p["name"], p["state"], str(p.get("pid") or "-"), _duration(p.get("uptime")),
            str(p.get("restarts", 0)), _last_exit(p.get("last_exit")),
            _memory(p.get("memory_rss")), "-" if cpu is None else f"{cpu:.1f}%",
            _versions(p), _degradations(p),
        ])
    rows = [[printable(cell) for cell in row] for row in rows]  # versions, reasons: plugin text
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"pipevisor daemon pid {daemon.get('pid', '?')}, "
             f"up {_duration(time.time() - daemon['started']) if 'started' in daemon else '-'}, "
             f"{len(rows) - 1} plugin(s), socket {daemon.get('socket', '?')}"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


@click.command()
@socket_option
@json_option
def status(socket_path: str | None, as_json: bool) -> None:
    """Show the daemon and every plugin: state, pid, uptime, restarts, last exit,
    memory and CPU of its process tree, versions and degradations."""
    result = _with_client(socket_path, as_json, lambda c: c.status())
    click.echo(_dump(result) if as_json else render_status(result))


# ================================================================ calls


def _parse_params(text: str | None, as_json: bool) -> Any:
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        _fail(EXIT_USAGE, f"PARAMS_JSON is not valid JSON: {exc}", as_json)
    if not isinstance(value, dict | list):
        _fail(EXIT_USAGE, "PARAMS_JSON must be a JSON object or array (JSON-RPC params)",
              as_json)
    return value


@click.command()
@click.argument("plugin")
@click.argument("method")
@click.argument("params_json", required=False, metavar="[PARAMS_JSON|-]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Give up after S seconds (default: the plugin's call timeout).")
@click.option("--notify", is_flag=True, help="Send a notification: no answer, no output.")
@socket_option
@json_option
def call(plugin: str, method: str, params_json: str | None, timeout: float | None,
         notify: bool, socket_path: str | None, as_json: bool) -> None:
    """Call METHOD on PLUGIN and print the result as JSON (PARAMS_JSON "-": read stdin)."""
    params = _parse_params(params_json, as_json)
    if notify:
        _with_client(socket_path, as_json, lambda c: c.notify(plugin, method, params))
        return
    result = _with_client(socket_path, as_json,
                          lambda c: c.call(plugin, method, params, timeout=timeout))
    click.echo(_dump(result))


# ================================================================ lifecycle


def _wait_option(default: float) -> Callable[[F], F]:
    return click.option("--wait", type=click.FloatRange(min=0), default=default,
                        show_default=True, metavar="S",
                        help="Wait up to S seconds for the plugin to settle (0: don't wait).")


def _lifecycle(verb: str, plugin: str, wait: float, socket_path: str | None,
               as_json: bool) -> None:
    result = _with_client(socket_path, as_json,
                          lambda c: getattr(c, verb)(plugin, wait=wait or None))
    if as_json:
        click.echo(_dump(result))
    else:
        pid = f" (pid {result['pid']})" if result.get("pid") else ""
        click.echo(printable(f"{result['name']}: {result['state']}{pid}"))
    if result["state"] == "failed":
        _fail(EXIT_UNAVAILABLE, f"{result['name']} failed: {result.get('reason')}", as_json,
              {"message": f"plugin {result['name']!r} failed", "reason": result.get("reason")})


@click.command()
@click.argument("plugin")
@_wait_option(30)
@socket_option
@json_option
def start(plugin: str, wait: float, socket_path: str | None, as_json: bool) -> None:
    """Start a stopped (or failed) plugin."""
    _lifecycle("start", plugin, wait, socket_path, as_json)


@click.command()
@click.argument("plugin")
@_wait_option(30)
@socket_option
@json_option
def stop(plugin: str, wait: float, socket_path: str | None, as_json: bool) -> None:
    """Stop a plugin gracefully; it stays loaded (``start`` brings it back)."""
    _lifecycle("stop", plugin, wait, socket_path, as_json)


@click.command()
@click.argument("plugin")
@_wait_option(30)
@socket_option
@json_option
def restart(plugin: str, wait: float, socket_path: str | None, as_json: bool) -> None:
    """Stop a plugin gracefully and start a new instance."""
    _lifecycle("restart", plugin, wait, socket_path, as_json)


@click.command()
@click.argument("name_or_path")
@_wait_option(30)
@socket_option
@json_option
def load(name_or_path: str, wait: float, socket_path: str | None, as_json: bool) -> None:
    """Load a plugin at run time (a configured or discovered name, or an executable's path);
    other plugins are untouched. A path is sent absolute: relative to where you are, not
    to the daemon's working directory."""
    if os.sep in name_or_path or os.path.isfile(name_or_path):
        name_or_path = os.path.abspath(name_or_path)
    _lifecycle("load", name_or_path, wait, socket_path, as_json)


@click.command()
@click.argument("plugin")
@socket_option
@json_option
def unload(plugin: str, socket_path: str | None, as_json: bool) -> None:
    """Stop a plugin gracefully and forget it; other plugins are untouched."""
    result = _with_client(socket_path, as_json, lambda c: c.unload(plugin))
    click.echo(_dump(result) if as_json else f"{plugin}: unloaded")


@click.command()
@socket_option
@json_option
def reload(socket_path: str | None, as_json: bool) -> None:
    """Re-read the daemon's configuration and apply it (like SIGHUP)."""
    result = _with_client(socket_path, as_json, lambda c: c.reload())
    errors = [str(e) for e in result.get("errors") or ()] if isinstance(result, dict) else []
    # The daemon answers a refused file with a summary (nothing changed, the reason in
    # "errors") rather than an error, so SIGHUP and the socket share one code path;
    # scripts need the refusal as an exit code, hence the check here.
    applied = isinstance(result, dict) and any(
        result.get(key) for key in ("started", "stopped", "restarted"))
    if as_json:
        click.echo(_dump(result))
    elif applied or not errors:
        lines = [f"{key}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
                 for key, value in result.items() if key != "errors"
                 ] if isinstance(result, dict) else [str(result)]
        click.echo("\n".join(["reloaded" if not errors else "reloaded in part", *lines]))
    if errors:
        what = ("reload partly applied" if applied
                else "reload refused, the running plugins are kept")
        _fail(EXIT_USAGE, f"{what}: " + "\n".join(errors), as_json,
              {"message": what, "errors": errors})


# ================================================================ following


def _event_line(ev: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("time") or time.time()))
    rest = {k: v for k, v in ev.items() if k not in ("plugin", "kind", "time", "subscription")}
    if ev.get("kind") == "state":
        detail = f"{rest.get('from')} -> {rest.get('to')}" + (
            f" ({rest['reason']})" if rest.get("reason") else "")
    else:
        detail = " ".join(f"{k}={orjson.dumps(v, default=str).decode()}" for k, v in rest.items())
    return printable(f"{stamp} {ev.get('plugin') or '-'} {ev.get('kind')} {detail}".rstrip())


@click.command()
@click.argument("plugin")
@click.option("-n", "--lines", type=click.IntRange(0, 10_000), default=50, show_default=True,
              help="How many of the last stderr lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@socket_option
@json_option
def logs(plugin: str, lines: int, follow: bool, socket_path: str | None, as_json: bool) -> None:
    """Print PLUGIN's recent stderr (the daemon keeps a bounded tail)."""

    def show(line: str) -> None:
        click.echo(orjson.dumps({"plugin": plugin, "line": line}).decode() if as_json
                   else printable(line, keep_tabs=True))

    def tail(c: Client) -> None:
        answer = c.request("logs", {"plugin": plugin, "lines": lines})
        if answer.get("omitted"):
            click.echo(f"pipevisor: {answer['omitted']} older lines left out: the answer is "
                       "capped in bytes (docs/bounds.md)", err=True)
        for line in answer["lines"]:
            show(line)

    def work(c: Client) -> None:
        if not follow:
            tail(c)
            return
        # subscribe first so nothing falls between the tail and the live lines
        first = True
        while True:
            with c.subscribe(plugins=[plugin], kinds=["stderr"]) as events:
                if first:
                    tail(c)
                    first = False
                try:
                    for ev in events:
                        show(str(ev.get("line", "")))
                except EventsLagged as lag:
                    click.echo(f"pipevisor: {lag.dropped} or more lines dropped (reader too "
                               "slow); following again", err=True)

    _with_client(socket_path, as_json, work)


@click.command()
@click.option("--plugin", "plugins", multiple=True, metavar="P",
              help="Only events of this plugin (repeatable).")
@click.option("--kind", "kinds", multiple=True, metavar="K",
              help="Only events of this kind: state, exit, restart, fault, limit, log, "
                   "stderr ... (repeatable; default: all but stderr).")
@socket_option
@json_option
def events(plugins: tuple[str, ...], kinds: tuple[str, ...], socket_path: str | None,
           as_json: bool) -> None:
    """Follow state changes, exits, restarts and limit breaches live, until Ctrl-C."""

    def work(c: Client) -> None:
        while True:  # until Ctrl-C; a reader that fell behind subscribes again
            with c.subscribe(plugins=list(plugins) or None,
                             kinds=list(kinds) or None) as stream:
                try:
                    for ev in stream:
                        click.echo(orjson.dumps(ev, default=str).decode() if as_json
                                   else _event_line(ev))
                except EventsLagged as lag:
                    click.echo(f"pipevisor: {lag.dropped} or more events dropped (reader too "
                               "slow); following again", err=True)

    _with_client(socket_path, as_json, work)


@click.command()
@socket_option
@json_option
def metrics(socket_path: str | None, as_json: bool) -> None:
    """Print every plugin's figures in the Prometheus text format (state, calls by
    outcome, restarts, limit breaches, memory and CPU): for node_exporter's textfile
    collector or a quick look; [daemon] metrics_listen serves the same over HTTP."""
    text = _with_client(socket_path, as_json, lambda c: c.metrics())
    click.echo(_dump({"text": text}) if as_json else text, nl=False)


COMMANDS = [status, call, start, stop, restart, load, unload, reload, logs, events, metrics]
"""Registered on the ``pipevisor`` group by supervisor/cli/main.py."""
