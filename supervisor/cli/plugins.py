"""``pipevisor list`` and ``pipevisor check``: finding plugins and judging one.

Only argument parsing and output; discovery lives in :mod:`pipevisor.supervisor.tools.discovery`
and the checks in :mod:`pipevisor.supervisor.tools.checker`.
"""

from __future__ import annotations

import os
from typing import Any

import click
import orjson

# discovery and the checker are imported in the command bodies: they pull in the engine
# (anyio, psutil, jsonschema via the config), and every other pipevisor command, which
# registers these, would pay for that at start-up.
_DEFAULT_PREFIX = "pipevisor-"
"""The file name prefix shown in --help (pipevisor.supervisor.tools.discovery.DEFAULT_PREFIX; a test
checks the two agree)."""


@click.command("list", short_help="List the plugin executables discovery finds.")
@click.option("--prefix", default=_DEFAULT_PREFIX, show_default=True,
              help="File name prefix that marks a plugin executable.")
@click.option("--dir", "dirs", multiple=True, metavar="DIR",
              help="Extra plugin folder, searched before PATH (repeatable).")
@click.option("--no-path", is_flag=True, help="Search only the --dir folders, not PATH.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(prefix: str, dirs: tuple[str, ...], no_path: bool, as_json: bool) -> None:
    """List plugin executables (PREFIX<name>) found in --dir folders and on PATH."""
    from pipevisor.supervisor.tools.discovery import DiscoveryConfig, discover

    try:
        config = DiscoveryConfig(prefix=prefix, use_path=not no_path, dirs=dirs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from exc
    result = discover(config)
    if as_json:
        click.echo(orjson.dumps(result.to_json()).decode())
        return
    if not result.found:
        where = ", ".join([*dirs, *(["PATH"] if not no_path else [])]) or "nowhere"
        click.echo(f"no plugins found (looked for {prefix}* in {where})")
    width = max((len(p.name) for p in result.found), default=0)
    for p in result.found:
        click.echo(f"{p.name:<{width}}  {p.path}")
    for s in result.shadowed:
        click.echo(f"shadowed: {s.path} (hidden by {s.shadowed_by})")
    for w in result.warnings:
        click.echo(f"warning: {w.path or '(empty)'}: {w.reason}")


def _resolve(target: str) -> str:
    """A file path as given, or a plugin name looked up like ``pipevisor list`` does."""
    from pipevisor.supervisor.tools.discovery import DEFAULT_PREFIX, discover

    if os.sep in target or os.path.exists(target):
        return target if os.sep in target else os.path.join(os.curdir, target)
    found = discover().by_name()
    name = target.removeprefix(DEFAULT_PREFIX)
    if name in found:
        return found[name].path
    raise click.BadParameter(f"{target!r} is neither a file nor a plugin found on PATH "
                             "(see `pipevisor list`)", param_hint="PLUGIN")


def _json_object(ctx: click.Context, param: click.Parameter, value: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object")
    return obj


def _method_params(ctx: click.Context, param: click.Parameter,
                   values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for value in values:
        method, sep, text = value.partition("=")
        if not sep or not method:
            raise click.BadParameter(f"{value!r}: expected METHOD=JSON")
        try:
            out[method] = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"{value!r}: the params are not JSON: {exc}") from exc
    return out


@click.command("check", short_help="Check that a plugin executable follows the protocol.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option("--timeout", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds to wait for each answer.")
@click.option("--grace", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds the plugin has to exit after shutdown or end of input.")
@click.option("--skip", "skip", multiple=True, metavar="METHOD",
              help="Declared method not to call (one that crashes or needs real params).")
@click.option("--slow-method", metavar="METHOD",
              help="A method that takes seconds, used to test cancellation.")
@click.option("--slow-params", default="{}", callback=_json_object, metavar="JSON",
              show_default=True, help="Params for --slow-method.")
@click.option("--preset", type=click.Choice(["mcp", "lsp"]),
              help="Check a foreign server by its preset: MCP initialize, tools/list, "
                   "ping, cancel; LSP initialize, shutdown, exit. See "
                   "docs/foreign-servers.md.")
@click.option("--params", "method_params", multiple=True, metavar="METHOD=JSON",
              callback=_method_params,
              help="Call METHOD with these params instead of {} (repeatable).")
@click.argument("plugin")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def check(as_json: bool, timeout: float, grace: float, skip: tuple[str, ...],
          slow_method: str | None, slow_params: dict[str, Any],
          preset: str | None, method_params: dict[str, Any], plugin: str,
          args: tuple[str, ...]) -> None:
    """Run PLUGIN (a path or a discovered name) with ARGS and check it follows the protocol.

    Besides the handshake, ping, cancel and shutdown, every method the plugin declares
    is called once, with {} unless --params gives its params (--skip leaves one out);
    the report says what each was called with. Options anywhere are the checker's;
    arguments for the plugin go after --:

        pipevisor check ./pipevisor-db --params 'get={"key":"a"}' -- --db /tmp/x

    Exit status 0 when every check passes (skipped ones and warnings allowed), 1 otherwise.
    """
    import anyio

    from pipevisor.supervisor.proc.spawn import SpawnError
    from pipevisor.supervisor.tools.checker import (
        CheckOptions,
        check_plugin,
        report_json,
        report_text,
    )

    executable = _resolve(plugin)
    opts = CheckOptions(timeout=timeout, grace=grace, skip_methods=frozenset(skip),
                        slow_method=slow_method, slow_params=slow_params,
                        method_params=method_params, preset=preset)
    try:
        report = anyio.run(check_plugin, (executable, *args), opts)
    except SpawnError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(report_json(report) if as_json else report_text(report))
    if not report.ok:
        raise SystemExit(1)


COMMANDS = (list_plugins, check)
