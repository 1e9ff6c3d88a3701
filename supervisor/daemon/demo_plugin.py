"""The two plugins ``pipevisor demo`` runs, shipped inside the package so that the demo
works from an installed wheel (the examples/ folder is not installed). Written with
:mod:`pipevisor.kit`, as a Python plugin author would.

    python -m pipevisor.supervisor.daemon.demo_plugin echo     # echo, reverse
    python -m pipevisor.supervisor.daemon.demo_plugin crashy   # work, crash (exit 3)
"""

from __future__ import annotations

import os
import sys

from pipevisor.kit import Plugin

CRASH_CODE = 3


def _echo() -> Plugin:
    plugin = Plugin("pipevisor-demo-echo", version="1.0.0")

    @plugin.method("echo", version="1.0", description="Return {text} unchanged")
    def echo(text: str) -> dict[str, str]:
        return {"text": text}

    @plugin.method("reverse", version="1.0", description="Return {text} reversed")
    def reverse(text: str) -> dict[str, str]:
        return {"text": text[::-1]}

    return plugin


def _crashy() -> Plugin:
    plugin = Plugin("pipevisor-demo-crashy", version="1.0.0")

    @plugin.method("work", version="1.0", description="Do some work: {done: true}")
    def work() -> dict[str, bool]:
        return {"done": True}

    @plugin.method("crash", version="1.0", description="Die mid-call with exit code 3")
    def crash() -> None:
        os.write(2, b"crashy: crash requested, exiting with code 3\n")
        os._exit(CRASH_CODE)

    return plugin


PLUGINS = {"echo": _echo, "crashy": _crashy}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in PLUGINS:
        sys.exit(f"usage: python -m {__spec__.name if __spec__ else __name__} "
                 f"{{{','.join(PLUGINS)}}}")
    PLUGINS[args[0]]().run()


if __name__ == "__main__":
    main()
