"""``pipevisor demo``: two plugins under an embedded supervisor, surviving a crash.

Runs the demo plugins shipped in the package (``demo_plugin.py``, written with the
kit), calls them, crashes one, watches it come back, and stops both; it needs nothing
but an installed pipevisor. ``scripts/demo`` in a checkout is the bigger tour: the
daemon with every example plugin, in every language.
``python -m pipevisor.supervisor.daemon.demo`` runs it too.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence

import anyio

from pipevisor.supervisor.engine.config import PluginSpec, StopPolicy
from pipevisor.supervisor.engine.events import Subscription
from pipevisor.supervisor.engine.states import PluginState
from pipevisor.supervisor.errors import PluginCrashed
from pipevisor.supervisor.records import PluginStatus

DEMO_PLUGIN = "pipevisor.supervisor.daemon.demo_plugin"
TIMEOUT = 10.0
"""Seconds any one step may take before the demo gives up."""


def example_plugins() -> list[PluginSpec]:
    """Specs for the two demo plugins (:mod:`~pipevisor.supervisor.daemon.demo_plugin`),
    run by this interpreter, so they work wherever pipevisor is installed."""
    stop = StopPolicy(shutdown_grace=2.0, eof_grace=2.0, term_grace=2.0)
    return [PluginSpec(name, (sys.executable, "-m", DEMO_PLUGIN, name), stop=stop)
            for name in ("echo", "crashy")]


def _table(rows: Sequence[PluginStatus]) -> list[str]:
    cells = [("NAME", "STATE", "PID", "PROTOCOL", "METHODS")] + [
        (r["name"], r["state"], str(r["pid"] or "-"), r["protocol_version"] or "-",
         ", ".join(sorted(r["methods"])) or "-")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


async def _transitions(sub: Subscription, plugin: str, until: PluginState) -> list[str]:
    """States ``plugin`` passes through, as announced on ``sub``, until it reaches ``until``."""
    seen: list[str] = []
    with anyio.fail_after(TIMEOUT):
        while True:
            event = await sub.next()
            if event.plugin != plugin or event.kind != "state":
                continue
            if not seen:
                seen.append(str(event.detail["from"]))
            seen.append(str(event.detail["to"]))
            if event.detail["to"] == until:
                return seen


async def run_demo(out: Callable[[str], None]) -> None:
    """Show a user what pipevisor does, in about ten lines written to ``out``."""
    specs = example_plugins()
    # The demo reports what happens itself; without a logging set-up, Python would also
    # print the supervisor's warnings (such as the crash) to stderr, between our lines.
    quiet = logging.NullHandler()
    pv_log = logging.getLogger("pipevisor")
    if not logging.getLogger().handlers:
        pv_log.addHandler(quiet)
    try:
        await _demo(specs, out)
    finally:
        pv_log.removeHandler(quiet)


async def _demo(specs: list[PluginSpec], out: Callable[[str], None]) -> None:
    from pipevisor.supervisor.engine.supervisor import (
        Supervisor,  # heavy import, only when the demo runs
    )

    async with Supervisor(specs) as sup:
        await sup.wait_ready(timeout=TIMEOUT)
        out("pipevisor demo: two plugins under an embedded supervisor")
        for line in _table(sup.status()):
            out(line)

        text = "hello, pipevisor"
        for method in ("echo", "reverse"):
            result = await sup.call("echo", method, {"text": text}, timeout=TIMEOUT)
            out(f"call echo.{method}({json.dumps({'text': text})}) -> {json.dumps(result)}")

        old_pid = sup.plugin_status("crashy")["pid"]
        async with sup.subscribe() as sub:
            try:
                await sup.call("crashy", "crash", {}, timeout=TIMEOUT)
                raise RuntimeError("the crashy plugin answered 'crash' instead of crashing")
            except PluginCrashed as exc:
                data = exc.data if isinstance(exc.data, dict) else {}
                stderr = data.get("stderr") or sup.logs("crashy", 1)[0]
                last = stderr[-1] if stderr else "-"
                out(f"call crashy.crash() -> PluginCrashed [{exc.code}] {exc.error.message}")
                out(f"  exit code {data.get('returncode')}, last stderr line: {last!r}")
            states = await _transitions(sub, "crashy", PluginState.READY)
        new_pid = sup.plugin_status("crashy")["pid"]
        out(f"crashy restarted: {' -> '.join(states)} (pid {old_pid} -> {new_pid})")
        result = await sup.call("crashy", "work", {}, timeout=TIMEOUT)
        out(f"call crashy.work() -> {json.dumps(result)}")

        for name in sup.names():
            sup.stop(name)
        with anyio.fail_after(TIMEOUT):
            for name in sup.names():
                await sup.wait_state(name, {PluginState.STOPPED, PluginState.FAILED}, TIMEOUT)
        exits = ", ".join(
            f"{r['name']} {r['state']} (exit code "
            f"{r['last_exit']['returncode'] if r['last_exit'] else None})"
            for r in sup.status())
        out(f"stopped all plugins: {exits}")


def main() -> None:
    anyio.run(run_demo, print)


if __name__ == "__main__":
    main()
