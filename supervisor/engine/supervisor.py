"""The embeddable supervisor: a set of plugin runners under one task group.

    async with Supervisor(config) as sup:
        result = await sup.call("echo", "echo", {"text": "hi"}, timeout=5)

Leaving the ``async with`` block stops every plugin gracefully and
concurrently, bounded by each plugin's grace periods.
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import MappingProxyType, TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from pipevisor.protocol import ErrorCode, ErrorObject, HandshakeParams, standard_error
from pipevisor.protocol.interfaces import Direction, InterfaceViolation, negotiate_host_methods
from pipevisor.supervisor.engine.config import PluginSpec, SupervisorConfig
from pipevisor.supervisor.engine.events import EventHub, Subscription
from pipevisor.supervisor.engine.health import HealthTicker
from pipevisor.supervisor.engine.host_notifications import NotificationHandler, NotificationHandlers
from pipevisor.supervisor.engine.interfaces import Adapter, AdapterRegistry, interfaces_from
from pipevisor.supervisor.engine.many_calls import lane_for, lane_possible
from pipevisor.supervisor.engine.metrics import render as render_metrics
from pipevisor.supervisor.engine.runner import PluginRunner
from pipevisor.supervisor.engine.sampler import Sampler
from pipevisor.supervisor.engine.states import SERVING, PluginState
from pipevisor.supervisor.errors import CallError, ConfigError, invalid_params, local
from pipevisor.supervisor.io import child_watch
from pipevisor.supervisor.proc import containment as _platform
from pipevisor.supervisor.proc import leftovers, rlimits, tree
from pipevisor.supervisor.proc.usage import EMPTY as EMPTY_USAGE
from pipevisor.supervisor.proc.usage import TreeUsage
from pipevisor.supervisor.records import PluginStatus

log = logging.getLogger("pipevisor.supervisor")


def _not_reserved(method: str, plugin: str) -> None:
    """The protocol's own methods (handshake, ping, cancel, shutdown) are the
    supervisor's: sent behind its back, a shutdown would be counted as a crash."""
    if method.startswith("pipevisor/"):
        raise local(ErrorCode.METHOD_UNAVAILABLE,
                    f"{method} is the protocol's own method, sent by the supervisor only; "
                    "use stop/restart (or `pipevisor stop`) to act on the plugin",
                    plugin=plugin, method=method)

HostMethod = Callable[..., Awaitable[Any]]

_UNSETTLED = frozenset({PluginState.STARTING, PluginState.HANDSHAKING, PluginState.STOPPING})


class HeapFreezer:
    """Keeps the long-lived heap out of the cyclic garbage collector (``gc.freeze()``).

    Every plugin leaves a few hundred long-lived Python objects (runner, connection,
    peer, transports, tasks), and a full collection walks all of them: ~300 ms at 1,000
    plugins here (perf/README.md, Scale), a latency tail for every call that lands in
    it. Once the plugins have settled (none starting, handshaking or stopping) after
    the supervisor starts or a load, the heap is frozen (``gc.freeze()``: no pause, it
    only moves the tracked objects aside), so later collections walk only new objects.
    After an unload, or once many instances have ended (restarts), a frozen object's
    garbage would never be collected (an unloaded plugin's runner, a dead instance's
    tasks and their reference cycles), so that pass is ``gc.unfreeze(); gc.collect();
    gc.freeze()``: one full collection, what every full collection cost before.
    Changes are debounced (``QUIET``) so a reload of many plugins pays it once. Leaving
    the supervisor unfreezes everything it froze.

    Process-wide, so an embedding host's objects are frozen too (harmless: frozen
    objects are still freed by reference counting; only their cycles wait for the next
    collecting pass or the supervisor's exit). Left alone when the host froze objects
    itself or disabled the collector, or with ``Supervisor(..., freeze_heap=False)``.
    """

    QUIET = 0.5
    """Seconds without change before a pass (debounce), once the plugins have settled."""
    SETTLE_MAX = 60.0
    """A pass runs at the latest this long after a change, settled or not."""
    CHURN_CHECK = 30.0
    """How often instance churn (restarts since the last pass) is looked at."""
    _active = 0
    """Freezers of this process that froze and have not unfrozen yet."""

    def __init__(self, runners: Mapping[str, PluginRunner]) -> None:
        self._runners = runners
        self._dirty = anyio.Event()
        self._collect = False
        self._instances = 0
        self.froze = False
        self.enabled = False
        """Whether this supervisor manages the collector (decided on entering it): not
        with ``freeze_heap=False``, nor when the host froze or disabled gc itself."""
        self.passes = 0
        """Unfreeze-collect-freeze passes so far."""
        self.last_pause_ms: float | None = None
        """How long the last pass held the event loop (a collecting pass: one full
        collection; a freeze alone: next to nothing)."""
        self.collections = 0
        """Passes that unfroze and collected (after unloads and restarts)."""
        self.frozen_objects = 0
        self.done = anyio.Event()
        """Set after each pass (replaced by a fresh one): for tests and hosts."""

    @staticmethod
    def host_manages_gc() -> bool:
        return not gc.isenabled() or (gc.get_freeze_count() > 0 and HeapFreezer._active == 0)

    def changed(self, *, collect: bool = False) -> None:
        """Plugins were added (or, with ``collect``, removed): a pass once they have
        settled; ``collect``: one that unfreezes and collects first."""
        self._collect = self._collect or collect
        self._dirty.set()

    def _churn(self) -> bool:
        total = sum(r.instance for r in self._runners.values())
        return total - self._instances >= max(32, len(self._runners) // 10)

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(self.CHURN_CHECK):
                await self._dirty.wait()
            if not self._dirty.is_set():
                if not self._churn():
                    continue
                self._collect = True
            deadline = anyio.current_time() + self.SETTLE_MAX
            while anyio.current_time() < deadline:
                self._dirty = anyio.Event()
                await anyio.sleep(self.QUIET)
                if not self._dirty.is_set() and not any(
                        r.state in _UNSETTLED for r in list(self._runners.values())):
                    break
            self._dirty = anyio.Event()
            collect, self._collect = self._collect, False
            self.refreeze(collect=collect)

    def refreeze(self, *, collect: bool = True) -> None:
        """One pass now: with ``collect``, collect what ended first; freeze what lives."""
        if self.host_manages_gc() and not self.froze:
            return
        started = time.perf_counter()
        if collect:
            gc.unfreeze()
            gc.collect()
            self.collections += 1
        gc.freeze()
        self.last_pause_ms = (time.perf_counter() - started) * 1000
        if not self.froze:
            self.froze = True
            HeapFreezer._active += 1
        self.passes += 1
        self.frozen_objects = gc.get_freeze_count()
        self._instances = sum(r.instance for r in self._runners.values())
        log.debug("heap frozen: %d objects, %d plugins; the pass took %.1f ms",
                  self.frozen_objects, len(self._runners), self.last_pause_ms)
        done, self.done = self.done, anyio.Event()
        done.set()

    def release(self) -> None:
        """Unfreeze on the way out: the host's collector sees everything again."""
        if self.froze:
            self.froze = False
            HeapFreezer._active -= 1
            gc.unfreeze()


class Supervisor:
    def __init__(self, config: SupervisorConfig | Sequence[PluginSpec] = (), *,
                 freeze_heap: bool = True) -> None:
        """``freeze_heap=False`` leaves the garbage collector alone (:class:`HeapFreezer`:
        by default the long-lived heap is frozen once plugins have started, so full
        collections do not walk every plugin's objects)."""
        if not isinstance(config, SupervisorConfig):
            config = SupervisorConfig(plugins=tuple(config))
        self.config = config
        self.events = EventHub()
        self.runners: dict[str, PluginRunner] = {}
        self.heap = HeapFreezer(self.runners)
        self._freeze_heap = freeze_heap
        self._host_methods: dict[str, tuple[HostMethod, str]] = {}
        self._usage = TreeUsage()
        self.notifications = NotificationHandlers()
        """Handlers for notifications plugins send (``notification_handler``)."""
        self._host_signatures: dict[str, inspect.Signature] = {}
        """Checked before a host method runs: params that do not fit it are a
        plugin's mistake (-32602), not the host's failure (-32603 and a traceback)."""
        self._tg: TaskGroup | None = None
        self._containment: _platform.Containment | None = None
        self._leftovers: leftovers.LeftoverRecord | None = None
        self._subreaper = False
        self.child_watching: child_watch.Mode | None = None
        """How plugin exits are noticed, decided on entry: ``pidfd`` (a pidfd per plugin
        on the event loop), ``builtin`` (Python 3.12+ asyncio does the same), ``host`` (the
        embedding host's own asyncio child watcher, kept), ``threads`` (a thread per
        plugin: no pidfds, or PIPEVISOR_PIDFD=0), ``not-asyncio``."""
        self._reaper_scope = anyio.CancelScope()
        self.sampler = Sampler(self.runners, config.sample_interval)
        """Resource sampling and limit enforcement (docs/limits.md); off when the interval is 0."""
        self._sampler_scope = anyio.CancelScope()
        self._ticker_scope = anyio.CancelScope()
        self.health = HealthTicker()
        """Sends every plugin's liveness pings, batched (engine/health.py)."""
        self._freezer_scope = anyio.CancelScope()
        self._fd_warned = False
        self._closing = False
        self.interfaces = interfaces_from(config.interfaces)
        """The host's interfaces (checked at construction: a bad file raises ConfigError)."""
        self.adapters = AdapterRegistry()
        for adapter in config.adapters:
            self.adapters.load(adapter)
        self._host_bindings = negotiate_host_methods(self.interfaces, self.interfaces.host)

    # ============================================================ lifecycle

    async def __aenter__(self) -> Supervisor:
        self._containment = _platform.detect_containment(
            force=None if self.config.containment == "auto" else self.config.containment
        )
        log.info("process containment: %s (%s)", self._containment.mechanism,
                 self._containment.detail)
        # before the first spawn: exits seen through pidfds on this loop, not a thread
        # per plugin; a host's own asyncio child watcher is kept (io/child_watch.py)
        self.child_watching = child_watch.install()
        if self.config.state_dir is not None:
            # checked (ours, private, no symlink) and locked: one supervisor per state dir
            leftovers.claim_state_dir(self.config.state_dir)
            self._leftovers = leftovers.LeftoverRecord(
                os.path.join(self.config.state_dir, "children.json"))
            killed = self._leftovers.cleanup()
            if killed:
                log.warning("killed %d processes left over by a previous instance: %s",
                            len(killed), killed)
        if self._containment.mechanism != "pidns":
            self._subreaper = tree.become_subreaper()
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self._subreaper:
            self._tg.start_soon(self._reap_adopted)
        self._tg.start_soon(self._run_ticker)
        if self.config.sample_interval > 0:
            self._tg.start_soon(self._run_sampler)
        self.heap.enabled = self._freeze_heap and not HeapFreezer.host_manages_gc()
        if self.heap.enabled:
            self._tg.start_soon(self._run_freezer)
        for spec in self.config.plugins:
            self._add(spec)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._closing = True
        self._freezer_scope.cancel()
        self.heap.release()
        self._sampler_scope.cancel()  # resumes any throttled tree so it can stop gracefully
        self._ticker_scope.cancel()  # stopping plugins need no pings
        for runner in self.runners.values():
            runner.close()
        if not self.runners:
            self._reaper_scope.cancel()
        # a safety net only: every plugin's stop is bounded by its own grace periods
        self._tg.cancel_scope.deadline = anyio.current_time() + self._stop_budget()
        tg, self._tg = self._tg, None
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            if self._subreaper:
                tree.reap_adopted(set())

    def _stop_budget(self) -> float:
        budgets = [s.stop.shutdown_grace + s.stop.eof_grace + s.stop.term_grace + 5.0
                   for s in (r.spec for r in self.runners.values())]
        return max(budgets, default=5.0)

    def _room_for(self, plugins: int) -> None:
        """Each running plugin holds 4 descriptors here, 3 pipes and a pidfd
        (proc/rlimits.py): raise the soft RLIMIT_NOFILE to the hard limit when they would
        not fit, and say once when even the pipes will not (pidfds give way first:
        io/child_watch.py; docs/process-containment.md, how many plugins fit)."""
        raised = rlimits.raise_nofile_for(plugins)
        if raised is not None:
            log.info("raised the soft descriptor limit (RLIMIT_NOFILE) to its hard limit "
                     "%d for %d plugins", raised[0], plugins)
        if not self._fd_warned:
            fits, hard = rlimits.nofile_room(plugins)
            if not fits:
                self._fd_warned = True
                log.warning("%d plugins need about %d descriptors, more than the hard "
                            "limit %d (RLIMIT_NOFILE): starts will fail with EMFILE; raise "
                            "it (LimitNOFILE= in a systemd unit, ulimit -Hn)", plugins,
                            plugins * rlimits.PIPES_PER_PLUGIN + rlimits.FD_HEADROOM, hard)

    async def _run_freezer(self) -> None:
        with self._freezer_scope:
            await self.heap.run()

    async def _run_ticker(self) -> None:
        with self._ticker_scope:
            await self.health.run()

    async def _run_sampler(self) -> None:
        with self._sampler_scope:
            await self.sampler.run()

    async def _reap_adopted(self) -> None:
        """Reap orphans that came to us as subreaper; ends when the last plugin has stopped."""
        with self._reaper_scope:
            while True:
                await anyio.sleep(1.0)
                known = {r.process.pid for r in self.runners.values() if r.process is not None}
                tree.reap_adopted(known)

    def _add(self, spec: PluginSpec) -> PluginRunner:
        assert self._tg is not None and self._containment is not None
        if spec.name in self.runners:
            raise ConfigError(f"a plugin named {spec.name!r} is already loaded")
        runner = PluginRunner(
            spec,
            hub=self.events,
            containment=self._containment,
            handshake_params=self._handshake_params,
            host_handler=self._dispatch_host_call,
            notification_handler=self._on_plugin_notification,
            leftovers=self._leftovers,
            interfaces=self.interfaces,
            adapters=self.adapters.lookup,
            host_adapters=self.adapters.lookup_host,
            health=self.health,
        )
        self.runners[spec.name] = runner
        self.sampler.runners_changed()
        self._room_for(len(self.runners))

        async def lifetime() -> None:
            try:
                await runner.run()
            finally:
                if self.runners.get(spec.name) is runner:
                    del self.runners[spec.name]
                    self.sampler.runners_changed()
                if self._closing and not self.runners:
                    self._reaper_scope.cancel()

        self._tg.start_soon(lifetime)
        if spec.autostart:
            runner.start()
        self.heap.changed()
        return runner

    # ============================================================ control

    async def load(self, spec: PluginSpec, *, wait: float | None = None) -> PluginRunner:
        """Add a plugin at run time; with ``wait``, return once it is ready (or failed)."""
        runner = self._add(spec)
        if wait is not None:
            await runner.wait_state(SERVING | {PluginState.FAILED}, wait)
        return runner

    async def unload(self, name: str) -> None:
        """Stop the plugin gracefully and forget it; other plugins are untouched."""
        runner = self.runner(name)
        runner.close()
        with anyio.CancelScope(shield=True):
            while name in self.runners:
                await runner.wait_state({PluginState.STOPPED, PluginState.FAILED}, 3600)
                await anyio.lowlevel.checkpoint()  # let the lifetime task remove it
        self.heap.changed(collect=True)  # its frozen objects (and cycles) go at that pass

    @property
    def containment(self) -> _platform.Containment | None:
        """How plugin process trees are contained (pid namespace, subreaper, ...; see
        docs/process-containment.md), detected on entry; None before ``async with``."""
        return self._containment

    def runner(self, name: str) -> PluginRunner:
        try:
            return self.runners[name]
        except KeyError:
            raise local(ErrorCode.UNKNOWN_PLUGIN, f"no plugin named {name!r} is loaded",
                        plugin=name) from None

    # ------------------------------------------------- per-plugin queries (public API)
    # What a daemon, a control server or an embedding host needs of one plugin, so that
    # none of them reaches into PluginRunner (tests/test_layering.py checks the daemon).

    def names(self) -> list[str]:
        """The loaded plugins, in load order."""
        return list(self.runners)

    def spec_of(self, name: str) -> PluginSpec:
        return self.runner(name).spec

    def state_of(self, name: str) -> PluginState:
        return self.runner(name).state

    def plugin_status(self, name: str) -> PluginStatus:
        """One plugin's status record (``status()`` has them all)."""
        return self.runner(name).status()

    async def wait_state(self, name: str, states: frozenset[PluginState] | set[PluginState],
                         timeout: float) -> PluginState:
        """Wait until ``name`` is in one of ``states``; TimeoutError after ``timeout``."""
        runner = self.runner(name)
        await runner.wait_state(states, timeout)
        return runner.state

    def logs(self, name: str, lines: int) -> tuple[list[str], int]:
        """The newest ``lines`` stderr lines kept for ``name``, and how many lines the
        log budget suppressed (docs/bounds.md)."""
        runner = self.runner(name)
        return (runner.stderr.last(lines) if lines else []), runner.stderr_suppressed

    def log_entries(self, name: str, lines: int) -> list[tuple[float, int, str]]:
        """Like :meth:`logs`, each line with when it came and from which instance."""
        return self.runner(name).stderr.entries(lines)

    # ---------------------------------------------- stderr kept across host runs (#19)

    def log_export(self, name: str) -> Callable[[], list[list[Any]]]:
        """A function returning ``name``'s kept stderr as ``[time, instance, line,
        carried]`` rows, oldest first. It stays usable after the plugin is unloaded or
        the supervisor has exited, so a daemon saves what the plugin wrote to the end."""
        return self.runner(name).stderr.export

    def seed_log(self, name: str, rows: Sequence[Any]) -> int:
        """Put stderr lines an earlier run kept (``log_export``'s rows) before ``name``'s
        own, as carried lines: :meth:`log_entries` has them, status and crash reports
        do not. Malformed rows are skipped; the tail's bounds hold. How many were kept."""
        return self.runner(name).stderr.seed(rows)

    def log_carried(self, name: str, lines: int) -> int:
        """How many of the last ``lines`` of :meth:`log_entries` were carried over."""
        return self.runner(name).stderr.carried_in(lines)

    def process_roots(self, *, running_only: bool = False) -> dict[int, str]:
        """pid -> plugin of each instance's top process (the shim, or the plugin without
        one): what a process tree is walked from."""
        return {r.process.pid: name for name, r in list(self.runners.items())
                if r.process is not None
                and not (running_only and r.process.returncode is not None)}

    def start(self, name: str) -> None:
        self.runner(name).start()

    def stop(self, name: str) -> None:
        self.runner(name).stop()

    def restart(self, name: str) -> None:
        self.runner(name).restart()

    async def wait_ready(self, names: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        """Wait until the plugins are serving (or given up on)."""
        targets = [self.runner(n) for n in names] if names is not None else list(
            self.runners.values())
        with anyio.fail_after(timeout):
            for runner in targets:
                await runner.wait_state(SERVING | {PluginState.FAILED}, timeout)

    # ============================================================ calls

    async def call(self, plugin: str, method: str, params: Any = None, *,
                   timeout: float | None = None,
                   on_progress: Callable[[dict[str, Any]], None] | None = None) -> Any:
        """Call ``method`` on ``plugin``. Always returns a result or raises a CallError.

        ``on_progress`` is called with the params of each ``pipevisor/progress`` the
        plugin sends for this call (SPEC 7.5: ``progress``, maybe ``total`` and
        ``message``), in order, until the answer arrives."""
        if method.startswith("pipevisor/"):
            _not_reserved(method, plugin)
        runner = self.runners.get(plugin) or self.runner(plugin)
        try:
            result = await runner.call(method, params, timeout, on_progress)
        except BaseException as exc:
            runner.count_failure(exc)  # for metrics: by outcome
            raise
        runner.calls_ok += 1
        return result

    async def call_many(self, plugin: str, method: str, params: Iterable[Any], *,
                        timeout: float | None = None, window: int | None = None) -> list[Any]:
        """Call ``method`` on ``plugin`` once for each item of ``params``, with up to
        ``window`` calls in flight (default: the plugin's ``max_in_flight``), from this
        one task.

        Returns the results in order, with a failed call's :class:`CallError` in its
        place, not raised: one bad item does not cost the others their answers.
        ``timeout`` is per call, as for :meth:`call`, and starts when it is that call's
        turn. Each call behaves as :meth:`call` from ``window`` tasks would
        (engine/many_calls.py); it is faster because no task waits per call. Cancelling
        the caller cancels the calls in flight at the plugin.

        Raises:
            CallError: before any call, for a reserved method or an unknown plugin.
            TypeError: ``params`` is a string, bytes or a mapping (one call's params,
                not a list of them).
            ValueError: ``window`` is under 1.
        """
        if isinstance(params, str | bytes | bytearray | Mapping):
            raise TypeError("call_many takes an iterable of params, one item per call; "
                            f"got {type(params).__name__}")
        if method.startswith("pipevisor/"):
            _not_reserved(method, plugin)
        runner = self.runners.get(plugin) or self.runner(plugin)
        if window is None:
            window = runner.gate.max_in_flight
        if window < 1:
            raise ValueError(f"call_many: window must be >= 1, not {window}")
        if timeout is None:
            timeout = runner.spec.calls.timeout
        todo: deque[tuple[int, Any]] = deque(enumerate(params))
        results: list[Any] = [None] * len(todo)

        async def worker() -> None:
            # through call() (which waits for a plugin on its way back), at least one
            # each, until a lane can take the rest
            while todo:
                index, item = todo.popleft()
                try:
                    results[index] = await self.call(plugin, method, item, timeout=timeout)
                except CallError as exc:
                    results[index] = exc
                if lane_possible(runner):
                    return

        while todo:
            lane = lane_for(runner, method, todo, results, timeout, window)
            if lane is not None:
                await lane.run()
                if not todo:
                    break
            # no lane now (the plugin is coming back, or the portable anyio path), or
            # its connection took no more
            async with anyio.create_task_group() as tg:
                for _ in range(min(window, len(todo))):
                    tg.start_soon(worker)
        return results

    METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
    """The HTTP content type of :meth:`metrics` (Prometheus text format 0.0.4)."""

    def metrics(self) -> str:
        """Prometheus text exposition of every plugin (``supervisor/engine/metrics.py``).
        Imported with the engine, not on first use: a scrape must work with no file
        descriptor to spare (a daemon out of them still answers /metrics)."""
        return render_metrics(list(self.runners.values()), self.sampler)

    async def notify(self, plugin: str, method: str, params: Any = None) -> None:
        _not_reserved(method, plugin)
        await self.runner(plugin).notify(method, params)

    def notification_handler(
        self, name: str, *, params_schema: Mapping[str, Any] | None = None,
    ) -> Callable[[NotificationHandler], NotificationHandler]:
        """Decorator registering ``async def handler(plugin, params)`` for notifications
        named ``name`` that plugins send; params are checked against ``params_schema``
        first when given (docs in engine/host_notifications.py)."""
        def register(fn: NotificationHandler) -> NotificationHandler:
            self.notifications.add(name, fn, params_schema)
            return fn
        return register

    def _on_plugin_notification(self, plugin: str, method: str, params: Any) -> None:
        if self._tg is not None and method in self.notifications:
            self.notifications.dispatch(plugin, method, params, self._tg)

    def host_method(self, name: str, version: str = "1.0") -> Callable[[HostMethod], HostMethod]:
        """Decorator registering an async function plugins may call on the host."""
        def register(fn: HostMethod) -> HostMethod:
            self.add_host_method(name, fn, version)
            return fn
        return register

    def add_host_method(self, name: str, fn: HostMethod, version: str = "1.0") -> None:
        self._host_methods[name] = (fn, version)
        try:
            self._host_signatures[name] = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without one: params go in unchecked
            self._host_signatures.pop(name, None)

    def register_adapter(self, method: str, host_major: int, plugin_major: int,
                         adapter: Adapter, direction: str = "plugin") -> None:
        """Bridge ``method`` between the host's major and a plugin's; used by plugins
        whose handshake comes after this call. ``direction="host"`` for a method the
        host serves to plugins (``Adapter`` says which converter does what)."""
        self.adapters.register(method, host_major, plugin_major, adapter, direction)

    async def _dispatch_host_call(self, method: str, params: Any) -> Any:
        entry = self._host_methods.get(method)
        if entry is None:
            raise CallError(standard_error(ErrorCode.METHOD_NOT_FOUND,
                                           f"host offers no method {method!r}"))
        fn, _ = entry
        binding = self._host_bindings.get(method) if self._host_bindings else None
        if binding is not None:
            try:
                binding.outgoing(params)
            except InterfaceViolation as exc:
                raise invalid_params(f"host method {method}", exc) from None
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = {}
        if isinstance(params, dict):
            kwargs = params
        elif isinstance(params, list):
            args = tuple(params)
        signature = self._host_signatures.get(method)
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:
                raise CallError(ErrorObject(
                    ErrorCode.INVALID_PARAMS, f"Invalid params for host method {method}: {exc}",
                    {"origin": "pipevisor", "method": method})) from None
        result = await fn(*args, **kwargs)
        if binding is not None:
            try:
                binding.incoming(result)
            except InterfaceViolation as exc:
                log.error("host method %s returned a result that breaks its interface: %s",
                          method, exc)
                raise CallError(standard_error(
                    ErrorCode.INTERNAL_ERROR,
                    f"the host's {method} broke its own interface {exc.version}: "
                    f"{exc.path}: {exc.message}")) from None
        return result

    def _handshake_params(self, spec: PluginSpec, instance: int) -> HandshakeParams:
        limits: dict[str, Any] = {
            "maxLineBytes": spec.max_line_bytes,
            "callTimeoutSeconds": spec.calls.timeout,
        }
        return HandshakeParams(
            plugin_name=spec.name,
            host_name=self.config.host_name,
            host_version=self.config.host_version,
            host_pid=os.getpid(),
            instance=instance,
            host_methods=MappingProxyType(
                {name: self.interfaces.host[name].offered() if name in self.interfaces.host
                 else (version,) for name, (_, version) in self._host_methods.items()}),
            interfaces=MappingProxyType(self.interfaces.offer(Direction.PLUGIN)),
            limits=MappingProxyType(limits),
        )

    # ============================================================ status

    async def status_with_usage(self) -> list[PluginStatus]:
        """:meth:`status`, plus each plugin tree's memory (``memory_rss``), CPU
        (``cpu_seconds``, and ``cpu_percent`` since the previous call, summed over the
        tree) and process count, read now in a worker thread: what ``pipevisor status``
        shows, for embedding hosts too."""
        plugins = self.status()
        pids = {s["pid"] for s in plugins if s["pid"] is not None}
        reader = self._usage
        samples = await anyio.to_thread.run_sync(
            lambda: {pid: reader.sample(pid) for pid in pids})
        reader.forget_except(pids)
        for s in plugins:
            usage = samples.get(s["pid"] or -1, EMPTY_USAGE)
            s["memory_rss"] = usage["memory_rss"]
            s["cpu_seconds"] = usage["cpu_seconds"]
            s["cpu_percent"] = usage["cpu_percent"]
            s["processes"] = usage["processes"]
        return plugins

    def status(self) -> list[PluginStatus]:
        return [runner.status() for runner in self.runners.values()]

    @asynccontextmanager
    async def subscribe(self, maxlen: int = 10_000, *, since: float | None = None
                        ) -> AsyncIterator[Subscription]:
        """Events from now on; with ``since`` (wall time), the kept ones published from
        then first (the last 1,000, stderr lines excluded)."""
        async with self.events.subscribe(maxlen, since=since) as sub:
            yield sub
