"""The ``pipevisor`` command. Only argument parsing and output; the work lives elsewhere.

Commands today: ``demo`` (embedded supervisor with the example plugins),
``spec`` (print the wire protocol spec), ``containment`` (what this machine
gives for keeping plugin trees contained), ``run`` (the daemon,
supervisor/daemon/service.py) and the control commands that talk to it.
"""

from __future__ import annotations

from typing import Any

import click
import orjson

from pipevisor.supervisor.cli.control import COMMANDS as CONTROL_COMMANDS
from pipevisor.supervisor.cli.plugins import COMMANDS as PLUGIN_COMMANDS


def _version() -> str:
    from importlib import metadata  # here, not at the top: only --version needs it

    try:
        return metadata.version("pipevisor")
    except metadata.PackageNotFoundError:  # running from a checkout without install
        return "0+unknown"


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """--version, looked up only when asked for (the package metadata costs ~10 ms to load)."""
    if value and not ctx.resilient_parsing:
        click.echo(f"pipevisor, version {_version()}")
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version, help="Show the version and exit.")
def main() -> None:
    """pipevisor: run plugins in any language as supervised child processes."""


@main.command(short_help="Run the example plugins and watch a crash being survived.")
def demo() -> None:
    """Run the example plugins under an embedded supervisor and show a crash being survived."""
    import anyio

    from pipevisor.supervisor.daemon.demo import run_demo

    anyio.run(run_demo, click.echo)


@main.command(short_help="Print the wire protocol specification (protocol/SPEC.md).")
def spec() -> None:
    """Print the wire protocol specification (protocol/SPEC.md) for plugin authors."""
    from importlib import resources

    click.echo(resources.files("pipevisor.protocol").joinpath("SPEC.md").read_text("utf-8"))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def containment(as_json: bool) -> None:
    """Show how plugin process trees are contained on this machine."""
    from pipevisor.supervisor.proc import containment as _platform
    described = _platform.detect_containment().describe()
    if as_json:
        click.echo(orjson.dumps(described).decode())
    else:
        shim = described["shim"]
        if shim is not None:
            shim = f"{shim} ({described['shim_source']}, run from a {described['shim_exec']})"
        click.echo(f"mechanism: {described['mechanism']}\nshim:      {shim or '-'}\n"
                   f"detail:    {described['detail']}")


@main.command(short_help="Run the supervisor daemon in the foreground.")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file (docs/configuration.md); default: discover "
                   "pipevisor-* executables on PATH with default policies.")
@click.option("--socket", "socket_path", metavar="PATH",
              help="Control socket (default: $PIPEVISOR_SOCKET, the file's daemon.socket, "
                   "then $XDG_RUNTIME_DIR/pipevisor/control.sock).")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines on stderr (default: the file's daemon.log_format, else text).")
def run(config_path: str | None, socket_path: str | None, log_format: str | None) -> None:
    """Run the supervisor in the foreground: SIGTERM/SIGINT stop it, SIGHUP reloads."""
    from pipevisor.supervisor.daemon.service import run_daemon

    raise SystemExit(run_daemon(config_path, socket_path, log_format))


@main.command(short_help="Check a configuration file without running anything.")
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
              help="The file to check (default: the built-in configuration).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def verify(config_path: str | None, as_json: bool, file: str | None) -> None:
    """Check a configuration without running anything (like nginx -t): the file
    (FILE, or --config) is read and checked as 'pipevisor run' would, discovery runs,
    and the plugins that would start are listed. Exit 0 when 'pipevisor run' would
    accept it, 2 when it would not."""
    from pipevisor.supervisor.daemon import config_file
    from pipevisor.supervisor.errors import ConfigError

    if file is not None and config_path is not None and file != config_path:
        raise click.UsageError("give the file once: as FILE or with --config")
    config_path = file or config_path

    try:
        config = config_file.load(config_path)
    except ConfigError as exc:
        if as_json:
            click.echo(orjson.dumps({"ok": False, "error": str(exc)}).decode())
        else:
            click.echo(f"pipevisor verify: configuration refused: {exc}", err=True)
        raise SystemExit(2) from None
    plugins: list[dict[str, Any]] = [
        {"name": s.name, "command": list(s.command), "preset": str(s.preset)}
        for s in config.supervisor.plugins]
    warnings = ([f"{w.path}: {w.reason}" for w in config.discovered.warnings]
                if config.discovered else [])
    if as_json:
        click.echo(orjson.dumps({"ok": True, "source": config.source, "plugins": plugins,
                                 "warnings": warnings}).decode())
        return
    click.echo(f"{config.source or '(built-in configuration)'}: ok, "
               f"{len(plugins)} plugin(s) would start")
    for plugin in plugins:
        click.echo(f"  {plugin['name']:<16} {' '.join(plugin['command'])}")
    for warning in warnings:
        click.echo(f"  warning: {warning}")


for _command in CONTROL_COMMANDS:  # status, call, start, stop, ... (the daemon's control socket)
    main.add_command(_command)

for _command in PLUGIN_COMMANDS:  # list (discovery on PATH), check (conformance checker)
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
