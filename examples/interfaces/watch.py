#!/usr/bin/env python3
"""Run both greeters against the greet interfaces and show what negotiation made of them.

    python examples/interfaces/watch.py             # no adapter: greeter-v1 is degraded
    python examples/interfaces/watch.py --adapter   # adapter 2->1: both greet
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # so that the config string "greet_adapters:v2_to_v1" imports
sys.path.append(str(HERE.parents[1]))  # run from a checkout even when not installed

from pipevisor.supervisor import CallError, PluginSpec, Supervisor, SupervisorConfig  # noqa: E402
from pipevisor.supervisor.engine.interfaces import AdapterSpec  # noqa: E402


async def main(with_adapter: bool) -> None:
    config = SupervisorConfig(
        plugins=[PluginSpec(name, (sys.executable, str(HERE / f"pipevisor-{name}")))
                 for name in ("greeter-v1", "greeter-v2")],
        interfaces=str(HERE / "interfaces"),
        adapters=[AdapterSpec("greet", 2, 1, "greet_adapters:v2_to_v1")] if with_adapter else [],
    )
    async with Supervisor(config) as sup:
        await sup.wait_ready(timeout=10)
        for status in sup.status():
            print(f"\n== {status['name']}: {status['state']}")
            print("   methods:", json.dumps(status["interfaces"], indent=None))
            for d in status["degradations"]:
                print(f"   degraded: {d['method']}: {d['reason']}")
        print()
        for plugin in ("greeter-v1", "greeter-v2"):
            params = {"who": {"name": "Ada", "title": "Dr."}}
            try:
                print(f"{plugin}.greet -> {await sup.call(plugin, 'greet', params)}")
            except CallError as exc:
                print(f"{plugin}.greet -> error {exc.code}: {exc.error.message}")
            print(f"{plugin}.about -> {await sup.call(plugin, 'about')}")
        try:
            await sup.call("greeter-v2", "greet", {"who": {"name": ""}})
        except CallError as exc:
            print(f"greeter-v2.greet with an empty name -> error {exc.code}: "
                  f"{exc.error.message}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(main, "--adapter" in sys.argv[1:])
