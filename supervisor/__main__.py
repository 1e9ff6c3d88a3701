"""``python -m supervisor`` is the ``pipevisor`` command."""

from __future__ import annotations

from supervisor.cli import main

main()
