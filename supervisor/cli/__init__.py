"""The ``pipevisor`` command line (click).

Import rule (tests/test_layering.py): click, the client, and (lazily, inside the
command that needs them) tools and the daemon; never the engine, proc or io, so that a
control command such as ``pipevisor status`` starts without loading anyio, jsonschema
or psutil.
"""

from __future__ import annotations

from pipevisor.supervisor.cli.main import main

__all__ = ["main"]
