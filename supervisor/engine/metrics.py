"""Prometheus text exposition (format 0.0.4) of every plugin's state, calls, restarts,
resources and limit breaches.

Why Prometheus text and no client library: it is the format every monitoring stack
scrapes (Prometheus, VictoriaMetrics, the OpenTelemetry collector, node_exporter's
textfile collector), it is a page of plain text, and rendering it from the runners'
own counters at scrape time costs nothing between scrapes. The daemon serves it over
HTTP when ``[daemon] metrics_listen`` is set and over the control socket
(``pipevisor metrics``); embedding code calls ``Supervisor.metrics()``.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from pipevisor.supervisor.engine.states import SERVING, PluginState

if TYPE_CHECKING:
    from pipevisor.supervisor.engine.runner import PluginRunner
    from pipevisor.supervisor.engine.sampler import Sampler

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Also ``Supervisor.METRICS_CONTENT_TYPE``, which is what other layers use."""


def _label(value: object) -> str:
    text = str(value)
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _labels(pairs: dict[str, object]) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Family:
    """One metric: its help, type and samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.samples: list[tuple[dict[str, object], float]] = []

    def add(self, value: float, **labels: object) -> None:
        self.samples.append((labels, value))

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            yield f"{self.name}{_labels(labels) if labels else ''} {_number(value)}"


def render(runners: Iterable[PluginRunner], sampler: Sampler | None = None) -> str:
    """The exposition text for ``runners`` (and the sampler's own cost)."""
    f = {name: _Family(f"pipevisor_{name}", kind, text) for name, kind, text in (
        ("plugin_info", "gauge", "Plugin identity: 1 per plugin, details in the labels."),
        ("plugin_state", "gauge", "1 for the state the plugin is in, 0 for the others."),
        ("plugin_up", "gauge", "1 when the plugin serves calls (ready or degraded)."),
        ("plugin_uptime_seconds", "gauge", "Seconds since the current instance became ready."),
        ("plugin_restarts_total", "counter", "Restarts since the plugin was loaded."),
        ("plugin_instance", "gauge", "Start counter of the current instance (1 = first)."),
        ("plugin_calls_total", "counter",
         "Calls by outcome: ok, plugin_error, cancelled, or pipevisor's reason "
         "(timeout, plugin_crashed, over_limit, invalid_params, queue_full, ...)."),
        ("plugin_calls_in_flight", "gauge", "Calls sent to the plugin and not answered yet."),
        ("plugin_calls_queued", "gauge", "Calls waiting for a free slot."),
        ("plugin_protocol_faults_total", "counter",
         "Malformed or unexpected lines the plugin wrote on stdout."),
        ("plugin_invalid_results_total", "counter",
         "Results that broke the method's interface schema."),
        ("plugin_degraded_methods", "gauge", "Methods disabled or adapted at negotiation."),
        ("plugin_limit_breaches_total", "counter",
         "Resource limit breaches by limit and action."),
        ("plugin_memory_bytes", "gauge",
         "Resident memory of the plugin's process tree (plugins with limits only)."),
        ("plugin_cpu_percent", "gauge",
         "CPU of the tree, percent of one core over the limit window (limited plugins)."),
        ("plugin_threads", "gauge", "Processes plus threads in the tree (limited plugins)."),
        ("plugin_open_fds", "gauge", "Open file descriptors of the tree (with an fd limit)."),
        ("plugin_throttled", "gauge", "1 while the CPU throttle holds the tree paused."),
        ("sampler_tick_seconds", "gauge", "Wall time of the last resource sampling pass."),
    )}
    now = time.monotonic()
    for r in runners:
        name = r.spec.name
        hs = r.handshake
        f["plugin_info"].add(1, plugin=name, mode="raw" if r.raw else "pipevisor",
                             plugin_version=(hs.plugin_version if hs else "") or "",
                             protocol_version=str(hs.protocol_version) if hs else "")
        for state in PluginState:
            f["plugin_state"].add(1 if r.state is state else 0, plugin=name, state=str(state))
        serving = r.state in SERVING
        f["plugin_up"].add(1 if serving else 0, plugin=name)
        if serving and r.ready_at:
            f["plugin_uptime_seconds"].add(round(now - r.ready_at, 3), plugin=name)
        f["plugin_restarts_total"].add(r.tracker.total_restarts, plugin=name)
        f["plugin_instance"].add(r.instance, plugin=name)
        f["plugin_calls_total"].add(r.calls_ok, plugin=name, outcome="ok")
        for outcome, count in sorted(r.call_failures.items()):
            f["plugin_calls_total"].add(count, plugin=name, outcome=outcome)
        conn = r.conn
        f["plugin_calls_in_flight"].add(len(conn.peer.outgoing) if conn is not None else 0,
                                        plugin=name)
        f["plugin_calls_queued"].add(r.queued, plugin=name)
        f["plugin_protocol_faults_total"].add(r.faults, plugin=name)
        f["plugin_invalid_results_total"].add(r.invalid_results, plugin=name)
        f["plugin_degraded_methods"].add(
            sum(1 for b in r.bindings.values() if b.degraded)
            + sum(1 for b in r.host_bindings.values() if b.degraded), plugin=name)
        for (limit, action), count in sorted(r.breach_counts.items()):
            f["plugin_limit_breaches_total"].add(count, plugin=name, limit=limit,
                                                 action=action)
        res = r.resources
        if res is not None:
            f["plugin_memory_bytes"].add(res["rss"], plugin=name)
            f["plugin_cpu_percent"].add(res["cpu_percent"], plugin=name)
            f["plugin_threads"].add(res["processes"], plugin=name)
            if res.get("fds") is not None:
                f["plugin_open_fds"].add(res["fds"], plugin=name)
            f["plugin_throttled"].add(1 if res["throttled"] else 0, plugin=name)
    if sampler is not None and sampler.interval > 0:
        f["sampler_tick_seconds"].add(round(sampler.last_tick_seconds, 6))
    out: list[str] = []
    for family in f.values():
        if family.samples:
            out.extend(family.lines())
    return "\n".join(out) + "\n"
