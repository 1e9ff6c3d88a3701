"""``pipevisor status|call|start|stop|restart|load|unload|reload|logs|events``: the daemon's
control commands, thin wrappers over :class:`pipevisor.supervisor.client.Client`.

Scripts rely on two things here, so both are stable and documented in
docs/cli.md: the exit codes (``EXIT_*`` below) and ``--json`` output (one JSON
document on stdout; for ``logs --follow`` and ``events``, one JSON object per
line). Errors always go to stderr, as ``pipevisor: <message>`` (or a JSON
``{"error": ...}`` line with ``--json``).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, TextIO, TypeVar

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

EVENT_KINDS = ("state", "exit", "restart", "fault", "limit", "log", "stderr", "progress",
               "notification", "interface", "invalid_result", "raw")
"""Every kind the daemon publishes (the engine's EventKind; tests/cli keeps the two in step:
named here so that ``--help`` does not load the engine)."""

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


def _fail(code: int, message: str, as_json: bool, error: dict[str, Any] | None = None,
          details: str = "") -> NoReturn:
    if as_json:
        click.echo(orjson.dumps({"error": error or {"message": message}, "exit": code},
                                default=str).decode(), err=True)
    else:
        click.echo(f"pipevisor: {printable(message)}", err=True)
        if details:
            click.echo(f"  details: {printable(details)}", err=True)
    sys.exit(code)


def _details(exc: CallError) -> str:
    """The explanation an error carries in ``data`` (which path of the params, which
    limit, the plugin's stderr...), on a line of its own: it used to show only with
    --json. The origin marker says nothing a reader needs."""
    data = exc.error.data
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "origin"}
    if data in (None, {}, []):
        return ""
    text = orjson.dumps(data, default=str).decode()
    return text if len(text) <= 2000 else text[:2000] + "..."


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
              exc.error.to_json(), details=_details(exc))
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
    sig = info.get("signal")
    code = info.get("returncode")
    if not sig and isinstance(code, int) and code < 0:
        sig = -code  # killed by a signal: subprocess reports it as a negative code
    if sig:
        return _signal_name(sig)
    if code is not None:
        return f"code {code}"
    return str(info.get("reason") or info.get("error") or "?")[:20]


def _signal_name(sig: Any) -> str:
    """SIGTERM for 15 (or "SIGTERM"); the number when this system has no name for it."""
    import signal

    if isinstance(sig, str):
        return sig if sig.startswith("SIG") else f"signal {sig}"
    try:
        return signal.Signals(int(sig)).name
    except (ValueError, TypeError):
        return f"signal {sig}"


def _restarts(p: dict[str, Any]) -> str:
    """The policy's restarts, and "+N" for those an operator asked for."""
    asked = p.get("requested_restarts") or 0
    return f"{p.get('restarts', 0)}" + (f"+{asked}" if asked else "")


def _version(p: dict[str, Any]) -> str:
    if p.get("mode") == "raw":
        return "raw"
    return str(p.get("plugin_version") or "-")


def _notes(p: dict[str, Any]) -> list[str]:
    """What a row cannot hold: why a plugin is failed, backing off or stopped, and what
    runs degraded; printed under the table, one line each."""
    notes = []
    if p.get("reason") and p.get("state") in ("failed", "backoff", "stopped", "degraded"):
        notes.append(f"{p['name']} {p['state']}: {p['reason']}")
    for d in p.get("degradations") or []:
        if d.get("method") is None:
            continue  # raw mode: already the reason above
        notes.append(f"{p['name']} degraded: {d.get('method')}: {d.get('reason')}")
    return notes


STATE_COLOURS = {"ready": "32", "degraded": "33", "backoff": "33", "starting": "36",
                 "handshaking": "36", "stopping": "36", "failed": "1;31"}
"""SGR codes of each state in the table (stopped stays plain)."""


def use_colour(stream: Any) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    return "NO_COLOR" not in os.environ and bool(getattr(stream, "isatty", lambda: False)())


def _table(rows: list[list[str]], colour: bool) -> list[str]:
    """A header and rows as aligned lines: every cell escaped (names, versions and
    reasons are plugin text), the STATE column (the second) coloured after padding
    when ``colour``, so colour never moves a column."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        cells = [cell.ljust(w) for cell, w in zip(r, widths, strict=True)]
        code = STATE_COLOURS.get(r[1]) if colour and n else None
        if code is not None:
            cells[1] = f"\x1b[{code}m{r[1]}\x1b[0m" + " " * (widths[1] - len(r[1]))
        lines.append(" ".join(cells).rstrip())
    return lines


def render_status(status: dict[str, Any], colour: bool = False) -> str:
    """The table fits 80 columns for names of up to 16 characters; reasons and
    degradations, which do not fit in a cell, follow the table a line each. With
    ``colour``, each state is coloured after padding, so the columns stay aligned."""
    daemon = status.get("daemon", {})
    header = ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "MEMORY", "CPU",
              "VERSION"]
    rows = [header]
    notes: list[str] = []
    for p in status.get("plugins", []):
        cpu = p.get("cpu_percent")
        rows.append([
            p["name"], p["state"], str(p.get("pid") or "-"), _duration(p.get("uptime")),
            _restarts(p), _last_exit(p.get("last_exit")),
            _memory(p.get("memory_rss")), "-" if cpu is None else f"{cpu:.1f}%",
            _version(p)[:10],
        ])
        notes += _notes(p)
    lines = [f"pipevisor daemon pid {daemon.get('pid', '?')}, "
             f"up {_duration(time.time() - daemon['started']) if 'started' in daemon else '-'}, "
             f"{len(rows) - 1} plugin(s), socket {daemon.get('socket', '?')}"]
    lines += _table(rows, colour)
    if notes:
        lines += ["", *(printable(note) for note in notes)]
    return "\n".join(lines)


def select_plugins(known: list[str], patterns: tuple[str, ...]) -> list[str]:
    """The plugins ``patterns`` name, in ``known``'s order: names, shell globs
    (``'mcp-*'``) or ``all``. UsageError-free: returns the unknown literal names'
    problem to the caller through :class:`UnknownPlugins`."""
    chosen: list[str] = []
    unknown = []
    for pattern in patterns:
        if pattern == "all":
            hits = list(known)
        elif any(ch in pattern for ch in "*?["):
            hits = fnmatch.filter(known, pattern)
        else:
            hits = [pattern] if pattern in known else []
            if not hits:
                unknown.append(pattern)
        chosen.extend(h for h in hits if h not in chosen)
    if unknown:
        raise UnknownPlugins(unknown, known)
    return [name for name in known if name in chosen]


class UnknownPlugins(Exception):
    def __init__(self, names: list[str], known: list[str]) -> None:
        self.names = names
        super().__init__(f"no plugin named {', '.join(map(repr, names))} is loaded "
                         f"(loaded: {', '.join(known) or 'none'})")


def _selected(client: Client, patterns: tuple[str, ...], as_json: bool) -> list[str]:
    known = [p["name"] for p in client.status()["plugins"]]
    try:
        return select_plugins(known, patterns)
    except UnknownPlugins as exc:
        _unknown(exc, as_json)


def _unknown(exc: UnknownPlugins, as_json: bool) -> NoReturn:
    _fail(EXIT_UNKNOWN_PLUGIN, str(exc), as_json,
          {"message": str(exc), "data": {"plugin": exc.names[0], "plugins": exc.names}})


def log_entries(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``logs`` answer as one record per line: ``line``, ``time``, ``instance``,
    ``previous`` (from an older daemon, which sends lines only: the line alone)."""
    meta = answer.get("entries") or []
    lines = answer.get("lines") or []
    if len(meta) != len(lines):
        meta = [{}] * len(lines)
    return [{"line": line, "time": m.get("time"), "instance": m.get("instance"),
             "previous": bool(m.get("previous"))} for line, m in zip(lines, meta, strict=True)]


def render_log(plugin: str, entries: list[dict[str, Any]]) -> list[str]:
    """Stamped lines with a marker where an instance (or the previous daemon run)
    begins, as ``pipevisor logs`` prints them."""
    out: list[str] = []
    current: tuple[bool, int] | None = None
    for e in entries:
        instance, previous = e.get("instance"), bool(e.get("previous"))
        if instance is not None and (previous, instance) != current:
            run = " (previous daemon run)" if previous else ""
            out.append(f"-- {plugin} instance {instance}{run} --")
            current = (previous, instance)
        out.append(_stamp(e.get("time")) + printable(str(e.get("line", "")), keep_tabs=True))
    return out


@click.command(short_help="Show the daemon and its plugins, or those named.")
@click.argument("plugins", nargs=-1, metavar="[PLUGIN|GLOB|all]...",
                shell_complete=lambda ctx, param, incomplete: complete_plugins(
                    ctx, param, incomplete))
@click.option("-n", "--lines", type=click.IntRange(0, 10_000), default=10,
              show_default=True,
              help="With plugins named: how many of each one's last stderr lines to show.")
@socket_option
@json_option
def status(plugins: tuple[str, ...], lines: int, socket_path: str | None,
           as_json: bool) -> None:
    """Show the daemon and every plugin (or those named: names, shell globs such as
    'mcp-*', or all): state, pid, uptime, restarts, last exit, memory and CPU of its
    process tree, versions and degradations. With plugins named, each one's last
    stderr lines follow, with their times, as systemctl status shows a unit's log."""

    def work(c: Client) -> dict[str, Any]:
        result = c.status()
        if not plugins:
            return result
        known = [p["name"] for p in result["plugins"]]
        try:
            wanted = set(select_plugins(known, plugins))
        except UnknownPlugins as exc:
            _unknown(exc, as_json)
        result["plugins"] = [p for p in result["plugins"] if p["name"] in wanted]
        for p in result["plugins"]:
            if lines:
                try:
                    p["logs"] = log_entries(c.request("logs", {"plugin": p["name"],
                                                               "lines": lines}))
                except CallError as exc:  # unloaded since: the status says enough
                    if exc.code != ErrorCode.UNKNOWN_PLUGIN:
                        raise
        return result

    result = _with_client(socket_path, as_json, work)
    if as_json:
        click.echo(_dump(result))
        return
    out = [render_status(result, colour=use_colour(sys.stdout))]
    for p in result["plugins"]:
        if "logs" in p:
            shown = len(p["logs"])
            out += ["", f"{p['name']}: last {shown} stderr line{'s' if shown != 1 else ''}"
                    + ("" if shown else " (it wrote none that is kept)"),
                    *render_log(p["name"], p["logs"])]
    click.echo("\n".join(out))


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


def _amount(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def progress_text(note: dict[str, Any]) -> str:
    """``3/10 30% decoding tiles`` (``3 decoding tiles`` without a total): one line of
    plain text, the plugin's message made printable."""
    done, total = note.get("progress"), note.get("total")
    text = _amount(done)
    if isinstance(total, int | float) and isinstance(done, int | float):
        text += f"/{_amount(total)}"
        if total > 0:
            text += f" {min(done / total, 1.0) * 100:.0f}%"
    message = note.get("message")
    if isinstance(message, str) and message:
        text += " " + printable(message)
    return text


class ProgressBar:
    """One line redrawn in place on a terminal (``\\r``, erase to the end of line):
    ``[#####-----] 5/10 50% message``, cut to the terminal's width, and erased again
    before the result is printed."""

    WIDTH = 24

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.drawn = False

    def show(self, note: dict[str, Any]) -> None:
        done, total = note.get("progress"), note.get("total")
        text = progress_text(note)
        if isinstance(total, int | float) and isinstance(done, int | float) and total > 0:
            filled = round(min(done / total, 1.0) * self.WIDTH)
            text = f"[{'#' * filled}{'-' * (self.WIDTH - filled)}] {text}"
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            columns = 80
        self.stream.write("\r" + text[:max(10, columns - 1)] + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


@click.command(short_help="Call METHOD on PLUGIN and print the result as JSON.")
@click.argument("plugin")
@click.argument("method")
@click.argument("params_json", required=False, metavar="[PARAMS_JSON|-]")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Give up after S seconds (default: the plugin's call timeout).")
@click.option("--notify", is_flag=True, help="Send a notification: no answer, no output.")
@click.option("--progress/--no-progress", "progress", default=None,
              help="Show the plugin's progress on stderr: a bar on a terminal (the "
                   "default there), else one line per update (only when asked).")
@socket_option
@json_option
def call(plugin: str, method: str, params_json: str | None, timeout: float | None,
         notify: bool, progress: bool | None, socket_path: str | None,
         as_json: bool) -> None:
    """Call METHOD on PLUGIN and print the result as JSON (PARAMS_JSON "-": read stdin).

    While the call runs, the plugin's progress is shown on stderr: as a bar when stderr
    is a terminal, else, with --progress, as one line per update (with --json, one
    JSON object per line). stdout only ever holds the result."""
    params = _parse_params(params_json, as_json)
    if notify:
        _with_client(socket_path, as_json, lambda c: c.notify(plugin, method, params))
        return
    err: TextIO = sys.stderr
    on_terminal = err.isatty()
    bar = ProgressBar(err) if on_terminal and progress is not False else None

    def line(note: dict[str, Any]) -> None:
        if as_json:
            shown = {k: v for k, v in note.items() if k != "id"}
            click.echo(orjson.dumps({"progress": shown}).decode(), err=True)
        else:
            click.echo(f"progress: {progress_text(note)}", err=True)

    listener = bar.show if bar is not None else line if progress else None

    def work(c: Client) -> Any:
        try:
            return c.call(plugin, method, params, timeout=timeout, on_progress=listener)
        finally:
            if bar is not None:
                bar.clear()

    result = _with_client(socket_path, as_json, work)
    click.echo(_dump(result))


# ================================================================ lifecycle


def _wait_option(default: float) -> Callable[[F], F]:
    return click.option("--wait", type=click.FloatRange(min=0), default=default,
                        show_default=True, metavar="S",
                        help="Wait up to S seconds for the plugin to settle (0: don't wait).")


def _lifecycle(verb: str, plugins: tuple[str, ...], wait: float, socket_path: str | None,
               as_json: bool) -> None:
    """``verb`` on each plugin named (names, globs, ``all``), one after the other; one
    line each, and the exit code of the worst outcome."""

    def work(c: Client) -> list[dict[str, Any]]:
        names = _selected(c, plugins, as_json)
        return [getattr(c, verb)(name, wait=wait or None) for name in names]

    results = _with_client(socket_path, as_json, work)
    single = len(plugins) == 1 and not any(ch in plugins[0] for ch in "*?[") \
        and plugins[0] != "all"
    if as_json:
        click.echo(_dump(results[0] if single and results else results))
    else:
        for result in results:
            pid = f" (pid {result['pid']})" if result.get("pid") else ""
            if wait:
                click.echo(printable(f"{result['name']}: {result['state']}{pid}"))
            else:  # not waited for: the state is the one before the request took effect
                click.echo(printable(f"{result['name']}: {verb} requested "
                                     f"(was {result['state']}{pid})"))
    failed = [r for r in results if r["state"] == "failed" and wait]
    if failed:
        names = ", ".join(r["name"] for r in failed)
        reasons = "; ".join(f"{r['name']}: {r.get('reason')}" for r in failed)
        _fail(EXIT_UNAVAILABLE, f"failed: {reasons}", as_json,
              {"message": f"plugin(s) {names} failed", "reason": reasons})


def complete_plugins(ctx: click.Context, param: click.Parameter,
                     incomplete: str) -> list[click.shell_completion.CompletionItem]:
    """Shell completion of plugin names, asked of the running daemon (nothing when none
    answers within half a second: completion must never hang a shell)."""
    from click.shell_completion import CompletionItem

    path = ctx.params.get("socket_path")
    try:
        with Client(path, connect_timeout=0.5) as client:
            names = [p["name"] for p in client.status()["plugins"]]
    except Exception:  # no daemon, no access: no suggestions
        return []
    return [CompletionItem(n) for n in [*names, "all"] if n.startswith(incomplete)]


_TARGETS = click.argument("plugins", nargs=-1, required=True, metavar="PLUGIN|GLOB|all...",
                          shell_complete=complete_plugins)


@click.command(short_help="Start stopped or failed plugins.")
@_TARGETS
@_wait_option(30)
@socket_option
@json_option
def start(plugins: tuple[str, ...], wait: float, socket_path: str | None,
          as_json: bool) -> None:
    """Start stopped (or failed) plugins: names, shell globs ('mcp-*') or all."""
    _lifecycle("start", plugins, wait, socket_path, as_json)


@click.command(short_help="Stop plugins gracefully; they stay loaded.")
@_TARGETS
@_wait_option(30)
@socket_option
@json_option
def stop(plugins: tuple[str, ...], wait: float, socket_path: str | None,
         as_json: bool) -> None:
    """Stop plugins gracefully; they stay loaded ('pipevisor start' brings them
    back)."""
    _lifecycle("stop", plugins, wait, socket_path, as_json)


@click.command(short_help="Stop plugins gracefully and start a new instance of each.")
@_TARGETS
@_wait_option(30)
@socket_option
@json_option
def restart(plugins: tuple[str, ...], wait: float, socket_path: str | None,
            as_json: bool) -> None:
    """Stop plugins gracefully and start a new instance of each."""
    _lifecycle("restart", plugins, wait, socket_path, as_json)


@click.command(short_help="Load a plugin at run time, by name or path.")
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

    def work(c: Client) -> dict[str, Any]:
        try:
            return c.load(name_or_path, wait=wait or None)
        except ControlError as exc:
            # a name the daemon neither has configured nor finds on its own PATH: look
            # on the caller's PATH too, as `pipevisor list` does, and send that path
            # (the daemon still applies its trust rule to it)
            if os.sep in name_or_path or "neither configured nor discovered" not in str(exc):
                raise
            from pipevisor.supervisor.tools.discovery import discover

            found = discover().by_name().get(name_or_path.removeprefix("pipevisor-"))
            if found is None:
                raise
            return c.load(os.path.abspath(found.path), wait=wait or None)

    result = _with_client(socket_path, as_json, work)
    if as_json:
        click.echo(_dump(result))
    else:
        pid = f" (pid {result['pid']})" if result.get("pid") else ""
        click.echo(printable(f"{result['name']}: {result['state']}{pid}"))
    if result["state"] == "failed":
        _fail(EXIT_UNAVAILABLE, f"{result['name']} failed: {result.get('reason')}", as_json,
              {"message": f"plugin {result['name']!r} failed", "reason": result.get("reason")})


@click.command(short_help="Stop a plugin gracefully and forget it.")
@click.argument("plugin")
@socket_option
@json_option
def unload(plugin: str, socket_path: str | None, as_json: bool) -> None:
    """Stop a plugin gracefully and forget it; other plugins are untouched."""
    result = _with_client(socket_path, as_json, lambda c: c.unload(plugin))
    click.echo(_dump(result) if as_json else f"{plugin}: unloaded")


@click.command(short_help="Re-read the configuration and apply it (like SIGHUP).")
@click.option("--dry-run", is_flag=True, help="Only say what the reload would change.")
@socket_option
@json_option
def reload(dry_run: bool, socket_path: str | None, as_json: bool) -> None:
    """Re-read the daemon's configuration and apply it (like SIGHUP); --dry-run only
    says what would start, stop and restart (like supervisorctl reread)."""
    result = _with_client(socket_path, as_json, lambda c: c.reload(dry_run=dry_run))
    if dry_run and not as_json and isinstance(result, dict) and not result.get("errors"):
        changes = [f"  would {verb}: {', '.join(result[key])}"
                   for verb, key in (("start", "started"), ("stop", "stopped"),
                                     ("restart", "restarted")) if result.get(key)]
        click.echo("\n".join(["dry run: " + ("changes" if changes else "nothing would change"),
                              *changes]))
        return
    errors = [str(e) for e in result.get("errors") or ()] if isinstance(result, dict) else []
    # The daemon answers a refused file with a summary (nothing changed, the reason in
    # "errors") rather than an error, so SIGHUP and the socket share one code path;
    # scripts need the refusal as an exit code, hence the check here.
    applied = isinstance(result, dict) and any(
        result.get(key) for key in ("started", "stopped", "restarted"))
    if as_json:
        click.echo(_dump(result))
    elif applied or not errors:
        # only what happened: an empty "started:" line says nothing
        lines = [f"  {key}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
                 for key, value in result.items() if key != "errors" and value
                 ] if isinstance(result, dict) else [str(result)]
        head = "reloaded" if not errors else "reloaded in part"
        if isinstance(result, dict) and not applied:
            head += ": nothing changed"
        click.echo("\n".join([head, *lines]))
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


@click.command(short_help="Print a plugin's recent stderr, with times and instances.")
@click.argument("plugin")
@click.option("-n", "--lines", type=click.IntRange(0, 10_000), default=50, show_default=True,
              help="How many of the last stderr lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until Ctrl-C.")
@socket_option
@json_option
def logs(plugin: str, lines: int, follow: bool, socket_path: str | None, as_json: bool) -> None:
    """Print PLUGIN's recent stderr (the daemon keeps a bounded tail), each line with
    the time it came; a marker line where a new instance of the plugin begins, and
    lines kept from before the daemon restarted marked as the previous daemon run."""
    current: list[tuple[bool, int] | None] = [None]

    def show(line: str, at: float | None = None, instance: int | None = None,
             previous: bool = False) -> None:
        if as_json:
            click.echo(orjson.dumps({"plugin": plugin, "line": line, "time": at,
                                     "instance": instance, "previous": previous}).decode())
            return
        if instance is not None and (previous, instance) != current[0]:
            if current[0] is not None or not follow:
                run = " (previous daemon run)" if previous else ""
                click.echo(f"-- {plugin} instance {instance}{run} --")
            current[0] = (previous, instance)
        click.echo(_stamp(at) + printable(line, keep_tabs=True))

    def tail(c: Client) -> None:
        answer = c.request("logs", {"plugin": plugin, "lines": lines})
        if answer.get("omitted"):
            click.echo(f"pipevisor: {answer['omitted']} older lines left out: the answer is "
                       "capped in bytes (docs/bounds.md)", err=True)
        meta = answer.get("entries") or []  # an older daemon sends lines only
        for i, line in enumerate(answer["lines"]):
            entry = meta[i] if len(meta) == len(answer["lines"]) else {}
            show(line, entry.get("time"), entry.get("instance"), bool(entry.get("previous")))

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
                        show(str(ev.get("line", "")), ev.get("time"), ev.get("instance"))
                except EventsLagged as lag:
                    click.echo(f"pipevisor: {lag.dropped} or more lines dropped (reader too "
                               "slow); following again", err=True)

    _with_client(socket_path, as_json, work)


def _stamp(at: float | None) -> str:
    """``HH:MM:SS.mmm `` in local time, or nothing when the time is unknown."""
    if at is None:
        return ""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d} "


def _since(value: str | None) -> float | None:
    """``30s``/``5m``/``2h``/``1d`` ago, or a Unix time, as a wall time."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if value[-1:] in units:
            return time.time() - float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected a duration such as 30s, 5m, 2h, 1d, "
                                 "or a Unix time", param_hint="--since") from None


@click.command(short_help="Follow the daemon's events live, until Ctrl-C.")
@click.option("--plugin", "plugins", multiple=True, metavar="P",
              help="Only events of this plugin (repeatable).")
@click.option("--kind", "kinds", multiple=True, metavar="K",
              help=f"Only events of this kind: {', '.join(EVENT_KINDS)} (repeatable; "
                   "default: all but stderr).")
@click.option("--since", callback=lambda ctx, param, value: _since(value), metavar="WHEN",
              help="First show the kept events from then: 30s, 5m, 2h, 1d ago, or a Unix "
                   "time.")
@socket_option
@json_option
def events(plugins: tuple[str, ...], kinds: tuple[str, ...], since: float | None,
           socket_path: str | None, as_json: bool) -> None:
    """Follow state changes, exits, restarts and limit breaches live, until Ctrl-C;
    with --since, first what the daemon kept from then (its last 1,000 events)."""

    def work(c: Client) -> None:
        start = since
        while True:  # until Ctrl-C; a reader that fell behind subscribes again
            with c.subscribe(plugins=list(plugins) or None, kinds=list(kinds) or None,
                             since=start) as stream:
                start = None  # the history once; a re-subscription follows live only
                try:
                    for ev in stream:
                        click.echo(orjson.dumps(ev, default=str).decode() if as_json
                                   else _event_line(ev))
                except EventsLagged as lag:
                    click.echo(f"pipevisor: {lag.dropped} or more events dropped (reader too "
                               "slow); following again", err=True)

    _with_client(socket_path, as_json, work)


TOP_SORTS = ("cpu", "memory", "calls", "errors", "restarts", "name")
"""What ``top`` may sort by; rates are per second over the last refresh."""


def render_top(status: dict[str, Any], previous: dict[str, tuple[int, int]],
               seconds: float, sort: str, colour: bool = False) -> str:
    """One ``top`` frame: a row per plugin with what changes from second to second
    (CPU, memory, calls and errors per second, calls in flight and queued), sorted by
    ``sort`` (largest first; names A to Z). ``previous``: each plugin's (calls_ok,
    call_errors) at the last frame, for the rates; updated in place."""
    rows: list[tuple[dict[str, Any], float, float]] = []
    for p in status.get("plugins", []):
        ok, failed = int(p.get("calls_ok") or 0), int(p.get("call_errors") or 0)
        before = previous.get(p["name"])
        previous[p["name"]] = (ok, failed)
        if before is None or seconds <= 0:
            rows.append((p, math.nan, math.nan))
        else:
            rows.append((p, max(0, ok - before[0]) / seconds,
                         max(0, failed - before[1]) / seconds))

    def key(row: tuple[dict[str, Any], float, float]) -> Any:
        p, calls, errors = row
        if sort == "name":
            return p["name"]
        value = {"cpu": p.get("cpu_percent"), "memory": p.get("memory_rss"),
                 "calls": calls, "errors": errors,
                 "restarts": (p.get("restarts") or 0) + (p.get("requested_restarts") or 0),
                 }[sort]
        number = 0.0 if value is None or value != value else float(value)
        return (-number, p["name"])

    rows.sort(key=key)
    header = ["NAME", "STATE", "PID", "CPU", "MEMORY", "CALLS/S", "ERR/S", "INFL", "QUEUE",
              "RESTARTS"]
    table = [header]
    for p, calls, errors in rows:
        cpu = p.get("cpu_percent")
        table.append([
            p["name"], p["state"], str(p.get("pid") or "-"),
            "-" if cpu is None else f"{cpu:.1f}%", _memory(p.get("memory_rss")),
            "-" if calls != calls else f"{calls:.1f}", "-" if errors != errors else f"{errors:.1f}",
            str(p.get("in_flight") or 0), str(p.get("queued") or 0), _restarts(p),
        ])
    return "\n".join(_table(table, colour))


@click.command(short_help="A live view of every plugin, refreshed until Ctrl-C.")
@click.option("--interval", "-d", type=click.FloatRange(min=0.2), default=2.0,
              show_default=True, metavar="S", help="Seconds between refreshes.")
@click.option("--iterations", "-n", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N refreshes (default: until Ctrl-C).")
@click.option("--sort", "-s", "sort", type=click.Choice(TOP_SORTS), default="cpu",
              show_default=True, help="Order of the rows (largest first; name: A to Z).")
@socket_option
def top(interval: float, iterations: int | None, sort: str, socket_path: str | None) -> None:
    """A live view of every plugin, refreshed every S seconds until Ctrl-C, like top:
    state, pid, CPU over the last refresh, memory, calls and errors per second, calls
    in flight and queued, restarts. On a terminal each refresh redraws the screen;
    otherwise frames follow one another, so top -n 1 suits scripts."""
    previous: dict[str, tuple[int, int]] = {}
    last = [time.monotonic()]

    def frame(c: Client) -> str:
        result = c.status()
        now = time.monotonic()
        seconds, last[0] = now - last[0], now
        stamp = time.strftime("%H:%M:%S")
        count = len(result.get("plugins", []))
        return (f"pipevisor top - {stamp}, {count} plugin(s), every {interval:g} s, "
                f"by {sort}\n" + render_top(result, previous, seconds, sort,
                                            use_colour(sys.stdout)))

    def work(c: Client) -> None:
        clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
        frame(c)  # the first CPU reading and call counts are since each plugin started
        shown = 0
        while iterations is None or shown < iterations:
            time.sleep(interval)
            click.echo(clear + frame(c) + ("" if clear else "\n"))
            shown += 1

    _with_client(socket_path, False, work)


@click.command(short_help="Print every plugin's figures in the Prometheus text format.")
@socket_option
@json_option
def metrics(socket_path: str | None, as_json: bool) -> None:
    """Print every plugin's figures in the Prometheus text format (state, calls by
    outcome, restarts, limit breaches, memory and CPU): for node_exporter's textfile
    collector or a quick look; [daemon] metrics_listen serves the same over HTTP."""
    text = _with_client(socket_path, as_json, lambda c: c.metrics())
    click.echo(_dump(parse_prometheus(text)) if as_json else text, nl=False)


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "\\": "\\", '"': '"'}
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")


def parse_prometheus(text: str) -> dict[str, Any]:
    """The text exposition format as JSON: ``{"metrics": [{"name", "type", "help",
    "samples": [{"labels": {...}, "value": number}]}]}``, in the order given. What
    --json scripts want instead of one string to parse again."""
    families: dict[str, dict[str, Any]] = {}

    def family(name: str) -> dict[str, Any]:
        return families.setdefault(name, {"name": name, "type": None, "help": None,
                                          "samples": []})

    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            _, kind, name, *rest = line.split(" ", 3)
            family(name)["help" if kind == "HELP" else "type"] = rest[0] if rest else ""
            continue
        found = _SAMPLE.match(line)
        if not found or line.startswith("#"):
            continue
        name, labels, value = found.groups()
        base = name if name in families else next(
            (name.removesuffix(s) for s in _SUFFIXES if name.removesuffix(s) in families), name)
        family(base)["samples"].append({
            "name": name,
            "labels": {k: _UNESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), v)
                       for k, v in _LABEL.findall(labels or "")},
            "value": float(value)})
    return {"metrics": list(families.values())}


COMMANDS = [status, top, call, start, stop, restart, load, unload, reload, logs, events,
            metrics]
"""Registered on the ``pipevisor`` group by supervisor/cli/main.py."""
