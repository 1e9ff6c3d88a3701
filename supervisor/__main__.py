"""``python -m pipevisor.supervisor`` is the ``pipevisor`` command."""

from __future__ import annotations

from pipevisor.supervisor.cli.main import main

main(prog_name="pipevisor")
