"""Builds specs for tests/plugins/fake_plugin.py with test-friendly (short) policies."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipevisor.supervisor import CallPolicy, HealthPolicy, PluginSpec, RestartPolicy, StopPolicy

FAKE = str(Path(__file__).resolve().parent.parent / "plugins" / "fake_plugin.py")


def fake_spec(name: str = "fake", *flags: str, **overrides: Any) -> PluginSpec:
    spec = PluginSpec(
        name,
        (sys.executable, FAKE, *flags),
        restart=RestartPolicy(first_backoff=0.05, max_delay=0.5, max_restarts=5,
                              within_seconds=30),
        stop=StopPolicy(shutdown_grace=2.0, eof_grace=2.0, term_grace=2.0),
        calls=CallPolicy(timeout=10.0),
        health=HealthPolicy(handshake_timeout=10.0, ping_interval=0),
    )
    return replace(spec, **overrides)
