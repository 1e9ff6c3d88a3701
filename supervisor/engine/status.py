"""What status shows of one plugin: the typed records of supervisor/records.py, built
in one place so the CLI, the control socket, metrics and embedding hosts read the same
fields (tests/test_public_api.py pins the keys)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipevisor.protocol.interfaces import How
from pipevisor.supervisor.engine.config import Preset
from pipevisor.supervisor.engine.states import SERVING
from pipevisor.supervisor.records import LastExit, PluginStatus

if TYPE_CHECKING:
    from pipevisor.supervisor.engine.runner import PluginRunner

__all__ = ["exit_record", "plugin_status"]


def exit_record(returncode: int | None, description: str, stderr: list[str]) -> LastExit:
    """How an instance ended, now: for status's ``last_exit`` and the ``exit`` event."""
    return {"returncode": returncode, "description": description, "time": time.time(),
            "stderr": stderr}


def plugin_status(r: PluginRunner) -> PluginStatus:
    now = time.monotonic()
    hs = r.handshake
    return {
        "name": r.spec.name,
        "state": str(r.state),
        "reason": r.reason,
        "pid": r.plugin_pid(),
        "shim_pid": (r.process.pid if r.process is not None
                     and r.containment.shim is not None else None),
        "instance": r.instance,
        "uptime": (now - r.ready_at) if r.ready_at and r.state in SERVING else None,
        "restarts": r.tracker.total_restarts,
        "requested_restarts": r.requested_restarts,
        "last_exit": r.last_exit,
        "faults": r.faults,
        "command": list(r.spec.command),
        "protocol_version": str(hs.protocol_version) if hs else None,
        "plugin_version": hs.plugin_version if hs else None,
        "methods": {m: (str(i.version) if i.version else None)
                    for m, i in hs.methods.items()} if hs else {},
        "mode": "raw" if r.raw else ("pipevisor" if hs else None),
        "preset": r.spec.preset.value if r.spec.preset is not Preset.NONE else None,
        "server": r.server_info,
        "max_in_flight": (r.server.max_in_flight if r.raw
                          else hs.max_concurrency if hs and hs.max_concurrency
                          and hs.max_concurrency < r.spec.calls.max_in_flight
                          else r.spec.calls.max_in_flight),
        "interfaces": ({m: b.to_json() for m, b in r.bindings.items()} if r.bindings
                       else {m: {"how": str(How.NO_INTERFACE)} for m in hs.methods}
                       if hs else {}),
        "degradations": ([{"method": None, "reason": r.reason}]
                         if r.raw and not r.raw_configured else [])
        + [{"method": b.method, "reason": b.reason} for b in r.bindings.values()
           if b.degraded]
        + [{"method": b.method, "host_method": True, "reason": b.reason}
           for b in r.host_bindings.values() if b.degraded],
        "host_methods": {m: b.to_json() for m, b in r.host_bindings.items()},
        "invalid_results": r.invalid_results,
        "in_flight": len(r.conn.peer.outgoing) if r.conn is not None else 0,
        "queued": r.gate.waiting,
        "calls_ok": r.calls_ok,
        "call_errors": sum(r.call_failures.values()),
        "stderr_tail": r.stderr.last(5),
        "resources": r.resources,
        "breaches": list(r.breaches),
        "containment": {**r.containment.describe(),
                        "privileges": r.privileges},
    }
