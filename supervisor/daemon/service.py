"""``pipevisor run``: the supervisor as a long-running, foreground service.

Foreground on purpose (no double fork, no pid file): systemd, containers and
terminals all want the process they started to be the daemon. Lifecycle:

- the state dir's instance lock is taken first, then the control socket is bound, so
  a second daemon on the same state dir or socket is refused before it could touch the
  first one's plugins or leftover records; every run-time folder (state dir, socket
  folder, ``$XDG_RUNTIME_DIR``) must be ours and closed to other writers, else exit 2
  naming the path and why;
- plugins start; READY=1 is sent once each is serving or given up on;
- SIGTERM/SIGINT stop every plugin gracefully and concurrently, exit 0; the
  same signal again during that stop SIGKILLs every plugin tree at once, exit 130;
- SIGHUP (or ``pipevisor reload``) re-reads the file and rediscovers: new
  plugins start, removed ones stop, changed ones restart, untouched ones keep
  running with their in-flight calls. A bad file is refused and logged and
  the running set stays as it was.

Exit codes: 0 clean stop, 1 could not start (socket or state dir taken ...), 2 bad
config or unsafe run-time folder,
130 stopped by force (a second stop signal).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any

import anyio

from pipevisor.supervisor import paths
from pipevisor.supervisor.daemon import config_file, plugin_log_files
from pipevisor.supervisor.daemon.config_file import DaemonConfig, LogFormat
from pipevisor.supervisor.daemon.control import (
    ControlLimits,
    ControlSocketError,
    SocketAccess,
    serve_control,
)
from pipevisor.supervisor.daemon.log_format import setup_logging
from pipevisor.supervisor.daemon.log_keep import LogKeeper
from pipevisor.supervisor.daemon.metrics_http import MetricsListenError, serve_metrics
from pipevisor.supervisor.daemon.systemd import Notifier
from pipevisor.supervisor.engine.config import PluginSpec
from pipevisor.supervisor.engine.states import SERVING, PluginState
from pipevisor.supervisor.engine.supervisor import Supervisor
from pipevisor.supervisor.errors import ConfigError
from pipevisor.supervisor.proc import leftovers, tree

log = logging.getLogger("pipevisor.daemon")

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


# ============================================================ the daemon

def _version() -> str:
    try:
        return metadata.version("pipevisor")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class Daemon:
    """The running daemon: its configuration, supervisor and the hooks the control
    socket calls (``pipevisor.supervisor.daemon.control.DaemonHooks``)."""

    config_path: str | None
    config: DaemonConfig
    socket_path: str
    notifier: Notifier = field(default_factory=Notifier)
    sup: Supervisor | None = None
    managed: set[str] = field(default_factory=set)
    """Plugins that come from the configuration; ones loaded at run time are left
    alone by a reload."""
    started_at: float = field(default_factory=time.time)
    forced = False
    """Set when a second stop signal killed the plugins instead of stopping them."""
    log_format_override: LogFormat | None = None
    """``--log-format`` given on the command line: it wins over the file, reloads too."""
    _reload_lock: anyio.Lock = field(default_factory=anyio.Lock)
    logs_kept: LogKeeper | None = None
    """Each plugin's stderr tail across daemon restarts (daemon/log_keep.py)."""

    # ------------------------------------------------------------ DaemonHooks

    async def reload(self) -> dict[str, Any]:
        """Re-read the file, rediscover, and apply the difference."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                try:
                    new = with_runtime_defaults(config_file.load(self.config_path))
                except ConfigError as exc:
                    log.error("reload refused, keeping the running plugins: %s", exc)
                    return {"started": [], "stopped": [], "restarted": [], "unchanged": [],
                            "errors": [str(exc)]}
                summary = await self._apply(new)
                log.info("reloaded: started %s, stopped %s, restarted %s, unchanged %d",
                         summary["started"] or "none", summary["stopped"] or "none",
                         summary["restarted"] or "none", len(summary["unchanged"]))
                return summary
            finally:
                self.notifier.ready(self._status_line())

    def resolve_plugin(self, name_or_path: str) -> PluginSpec:
        known = self.config.loadable(name_or_path)
        if known is not None:
            return known
        if os.sep in name_or_path or os.path.isfile(name_or_path):
            path = os.path.abspath(name_or_path)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise ConfigError(f"{name_or_path!r} is not an executable file")
            base = os.path.basename(path)
            name = base.removeprefix(self.config.discovery.prefix)
            return config_file.plugin_spec(name, (path,), {}, self.config.defaults,
                                           f"plugin {path}")
        fresh = config_file.load(self.config_path)  # discovery may know a new one
        known = fresh.loadable(name_or_path)
        if known is not None:
            return known
        disc = self.config.discovery
        where = [*disc.dirs, *(["the daemon's PATH: " + os.environ.get("PATH", "")]
                               if disc.use_path else [])] if disc.enabled else []
        looked = (f"looked for {disc.prefix}{name_or_path} in " + "; ".join(where)
                  if where else "discovery is off")
        raise ConfigError(f"{name_or_path!r} is neither configured nor discovered "
                          f"({looked}), and not a path to an executable (a path is "
                          "resolved where you run `pipevisor load`)")

    def loaded(self, name: str) -> None:
        """A plugin was just loaded (at start, by a reload or ``pipevisor load``): before
        its first line, put what the previous daemon run kept of its stderr first."""
        sup, keeper = self.sup, self.logs_kept
        if sup is None or keeper is None:
            return
        spec = sup.spec_of(name)
        keeper.seed(name, sup.seed_log, (spec.stderr_lines, spec.stderr_tail_bytes))

    def _log_exports(self) -> dict[str, Any]:
        """What the stop saves: each plugin's export function (usable after the plugin
        has stopped) and tail bounds, taken while they are still loaded."""
        sup = self.sup
        assert sup is not None
        return {name: (sup.log_export(name), (sup.spec_of(name).stderr_lines,
                                              sup.spec_of(name).stderr_tail_bytes))
                for name in sup.names()}

    def info(self) -> dict[str, Any]:
        sup = self.sup
        return {
            "pid": os.getpid(), "version": _version(), "started_at": self.started_at,
            "config": self.config_path, "socket": self.socket_path,
            "containment": (sup.containment.mechanism
                            if sup is not None and sup.containment is not None else None),
            "managed": sorted(self.managed),
        }

    # ------------------------------------------------------------ work

    async def preview(self) -> dict[str, Any]:
        """What ``reload`` would do, without doing it (``pipevisor reload --dry-run``,
        like supervisorctl's ``reread``): the same summary, nothing started or stopped."""
        try:
            new = with_runtime_defaults(config_file.load(self.config_path))
        except ConfigError as exc:
            return {"started": [], "stopped": [], "restarted": [], "unchanged": [],
                    "errors": [str(exc)], "dry_run": True}
        started, stopped, restarted, unchanged, errors = self._diff(new)
        return {"started": started, "stopped": stopped, "restarted": restarted,
                "unchanged": unchanged, "errors": errors, "dry_run": True}

    def _diff(self, new: DaemonConfig) -> tuple[list[str], list[str], list[str], list[str],
                                               list[str]]:
        """(started, stopped, restarted, unchanged, errors) from the running set to
        ``new``'s plugins: a pure comparison of frozen specs by name."""
        assert self.sup is not None
        sup = self.sup
        wanted = {s.name: s for s in new.supervisor.plugins}
        started: list[str] = []
        stopped = sorted(self.managed - wanted.keys())
        restarted: list[str] = []
        unchanged: list[str] = []
        errors: list[str] = []
        loaded = set(sup.names())
        for name, spec in wanted.items():
            if name not in loaded:
                started.append(name)
            elif name not in self.managed:
                errors.append(f"{name}: a plugin loaded at run time has this name; "
                              "unload it for the configured one to start")
            elif sup.spec_of(name) != spec:
                restarted.append(name)
            else:
                unchanged.append(name)
        return started, stopped, restarted, unchanged, errors

    async def _apply(self, new: DaemonConfig) -> dict[str, Any]:
        assert self.sup is not None
        sup = self.sup
        self._apply_settings(new)
        wanted = {s.name: s for s in new.supervisor.plugins}
        started, stopped, restarted, unchanged, errors = self._diff(new)

        async def unload(name: str) -> None:
            if name in sup.names():
                await sup.unload(name)

        async with anyio.create_task_group() as tg:
            for name in stopped + restarted:
                tg.start_soon(unload, name)
        self.managed -= set(stopped)
        for name in started + restarted:
            try:
                await sup.load(wanted[name])
                self.loaded(name)
                self.managed.add(name)
            except ConfigError as exc:
                errors.append(str(exc))
        self.config = new
        await self._wait_ready(started + restarted)
        return {"started": started, "stopped": stopped, "restarted": restarted,
                "unchanged": unchanged, "errors": errors}

    def _apply_settings(self, new: DaemonConfig) -> None:
        """Settings a reload can apply to the running daemon: the log format and level
        and the sampling interval; the others (socket, containment, state dir,
        interfaces, adapters, host identity) are named in a warning and wait for the
        next start, because changing them under running plugins would mean restarting
        every plugin behind the user's back."""
        assert self.sup is not None
        old_d, new_d = self.config.daemon, new.daemon
        if (old_d.log_level, old_d.log_format) != (new_d.log_level, new_d.log_format):
            setup_logging(self.log_format_override or new_d.log_format, new_d.log_level.value)
            log.info("reload: logging is now %s at level %s",
                     (self.log_format_override or new_d.log_format).value, new_d.log_level.value)
        files = ("plugin_log_dir", "plugin_log_max_bytes", "plugin_log_backups")
        if any(getattr(old_d, key) != getattr(new_d, key) for key in files):
            try:
                plugin_log_files.install(new_d.plugin_log_dir, new_d.plugin_log_max_bytes,
                                         new_d.plugin_log_backups)
                log.info("reload: plugin log files now %s", new_d.plugin_log_dir or "off")
            except ConfigError as exc:
                log.error("reload: plugin log files unchanged: %s", exc)
        later = [f"daemon.{key}" for key in ("socket", "metrics_listen", "socket_group")
                 if getattr(old_d, key) != getattr(new_d, key)]
        old_s, new_s = self.config.supervisor, new.supervisor
        sampler = self.sup.sampler
        if old_s.sample_interval != new_s.sample_interval:
            if old_s.sample_interval > 0 and new_s.sample_interval > 0:
                sampler.interval = new_s.sample_interval
                log.info("reload: limits are now sampled every %g s", new_s.sample_interval)
            else:
                later.append("supervisor.sample_interval (turning sampling on or off)")
        later.extend(f"supervisor.{key}" for key in (
            "containment", "state_dir", "interfaces", "adapters", "host_name", "host_version")
            if getattr(old_s, key) != getattr(new_s, key))
        if later:
            log.warning("reload: %s changed; that takes effect at the next start of "
                        "pipevisor run", ", ".join(later))

    async def _wait_ready(self, names: list[str]) -> None:
        assert self.sup is not None
        deadline = anyio.current_time() + self.config.daemon.ready_timeout
        for name in names:
            left = deadline - anyio.current_time()
            if name not in self.sup.names() or left <= 0:
                continue
            try:
                await self.sup.wait_state(name, SERVING | {PluginState.FAILED}, left)
            except TimeoutError:
                log.warning("plugin %s is not ready after %.0f s (state %s); carrying on",
                            name, self.config.daemon.ready_timeout, self.sup.state_of(name))

    def _status_line(self) -> str:
        if self.sup is None:
            return "starting"
        states = [self.sup.state_of(name) for name in self.sup.names()]
        ready = sum(1 for s in states if s in SERVING)
        failed = sum(1 for s in states if s is PluginState.FAILED)
        other = len(states) - ready - failed
        text = f"{ready} plugin{'s' if ready != 1 else ''} ready"
        if failed:
            text += f", {failed} failed"
        if other:
            text += f", {other} other"
        return text

    async def _watchdog(self, interval: float) -> None:
        """Pings only while the event loop runs this task: a wedged loop stops them
        and systemd restarts the daemon."""
        while True:
            self.notifier.watchdog()
            await anyio.sleep(interval)

    async def run(self) -> None:
        sup = Supervisor(replace(self.config.supervisor, plugins=()))
        self.sup = sup
        self.logs_kept = LogKeeper(self.config.supervisor.state_dir)
        exports: dict[str, Any] = {}
        async with anyio.create_task_group() as outer:
            # bound before any plugin starts: a second daemon stops here, harmlessly
            settings = self.config.daemon
            limits = ControlLimits(max_connections=settings.control_max_connections,
                                   idle_timeout=settings.control_idle_timeout)
            group = settings.socket_group
            access = SocketAccess(gid=None if group is None
                                  else config_file.socket_group_id(group))
            await outer.start(lambda task_status: serve_control(
                sup, self.socket_path, self, limits=limits, access=access,
                task_status=task_status))
            listen = settings.metrics_listen
            if listen is not None:
                host, port = config_file.listen_address(listen)
                await outer.start(lambda task_status: serve_metrics(
                    sup.metrics, host, port, max_connections=settings.metrics_max_connections,
                    task_status=task_status))
            if self.notifier.watchdog_interval:
                outer.start_soon(self._watchdog, self.notifier.watchdog_interval)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                            signal.SIGHUP) as signals:
                async with sup:
                    async with anyio.create_task_group() as work:
                        work.start_soon(self._start_plugins)
                        async for signum in signals:
                            if signum == signal.SIGHUP:
                                log.info("SIGHUP: reloading %s",
                                         self.config_path or "the built-in configuration")
                                work.start_soon(self.reload)
                                continue
                            log.info("%s: stopping %d plugins (send it again to kill them "
                                     "now)", signal.Signals(signum).name, len(sup.names()))
                            self.notifier.stopping()
                            outer.start_soon(self._force_on_second_signal, signals, sup)
                            work.cancel_scope.cancel()
                            break
                    exports = self._log_exports()  # read after every plugin has stopped
            self.logs_kept.save(exports)
            outer.cancel_scope.cancel()
        log.info("stopped")

    async def _force_on_second_signal(self, signals: AsyncIterator[int],
                                      sup: Supervisor) -> None:
        """A second SIGTERM/SIGINT during the graceful stop (an impatient Ctrl-C, or a
        service manager's second request) SIGKILLs every plugin tree at once instead of
        waiting out their grace periods; the daemon then exits 130."""
        async for signum in signals:
            if signum == signal.SIGHUP:
                continue  # no reload while stopping
            live = list(sup.process_roots(running_only=True))
            log.warning("%s again: killing %d plugins now (SIGKILL), without waiting for "
                        "their graceful stop", signal.Signals(signum).name, len(live))
            self.forced = True
            for pid in live:
                tree.kill_tree(pid)
            return

    async def _start_plugins(self) -> None:
        assert self.sup is not None
        async with self._reload_lock:  # a SIGHUP now waits for the first start
            for spec in self.config.supervisor.plugins:
                await self.sup.load(spec)
                self.loaded(spec.name)
                self.managed.add(spec.name)
            self._log_discovery()
            await self._wait_ready(list(self.managed))
        status = self._status_line()
        log.info("pipevisor %s running (%s); control socket %s",
                 _version(), status, self.socket_path)
        self.notifier.ready(status)

    def _log_discovery(self) -> None:
        found = self.config.discovered
        if found is None:
            return
        for w in found.warnings:
            log.warning("discovery skipped %s: %s", w.path, w.reason)
        for s in found.shadowed:
            log.info("discovery: %s is shadowed by %s", s.path, s.shadowed_by)


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def with_runtime_defaults(config: DaemonConfig) -> DaemonConfig:
    """The daemon records its plugins' process trees (to clean up after a crash of its
    own) in the runtime directory unless the file says otherwise."""
    if config.supervisor.state_dir is not None:
        return config
    return replace(config, supervisor=replace(config.supervisor,
                                              state_dir=paths.runtime_dir()))


def run_daemon(config_path: str | None, socket: str | None, log_format: str | None) -> int:
    """The body of ``pipevisor run``; returns the exit code."""
    try:
        config = config_file.load(config_path)
        # the runtime directory is checked here too (paths.private_dir): refused, not used
        config = with_runtime_defaults(config)
        sock = config_file.socket_path(socket, config)
    except ConfigError as exc:
        sys.stderr.write(f"pipevisor run: configuration refused: {exc}\n")
        return EXIT_BAD_CONFIG
    fmt = LogFormat(log_format) if log_format else config.daemon.log_format
    setup_logging(fmt, config.daemon.log_level.value)
    state_dir = config.supervisor.state_dir
    try:
        plugin_log_files.install(config.daemon.plugin_log_dir,
                                 config.daemon.plugin_log_max_bytes,
                                 config.daemon.plugin_log_backups)
        paths.secure_dir(os.path.dirname(os.path.abspath(sock)),
                         what="the control socket's folder")
        if state_dir is not None:
            # one instance per state dir, for this process's life: a second daemon stops
            # here, before it reads a record or binds anything
            leftovers.claim_state_dir(state_dir)
    except ConfigError as exc:
        log.error("configuration refused: %s", exc)
        return EXIT_BAD_CONFIG
    except leftovers.StateDirBusy as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    daemon = Daemon(os.path.abspath(config_path) if config_path else None, config, sock,
                    log_format_override=LogFormat(log_format) if log_format else None)
    try:
        anyio.run(daemon.run)
    except (ControlSocketError, MetricsListenError) as exc:
        log.error("cannot start: %s", exc)
        return EXIT_START_FAILED
    except BaseExceptionGroup as group:
        refused, rest = group.split((ControlSocketError, MetricsListenError))
        if refused is None or rest is not None:
            raise
        log.error("cannot start: %s", _first(refused))
        return EXIT_START_FAILED
    except KeyboardInterrupt:  # a Ctrl-C before the signal handlers were in place
        return EXIT_INTERRUPTED
    finally:
        daemon.notifier.close()
    return EXIT_INTERRUPTED if daemon.forced else EXIT_OK
