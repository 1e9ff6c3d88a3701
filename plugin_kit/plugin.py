"""The Plugin object: registration, the handshake, and the start of the run loop.

Start-up is part of every restart (a plugin killed by the supervisor is back
only once it has answered the handshake), so this module and everything
``import pipevisor.kit`` loads are kept to the standard library's cheap corner:
no ``pipevisor.protocol`` (orjson, dataclasses, enum), no ``asyncio``, no ``logging``,
no ``typing`` at run time. :meth:`Plugin.run` answers the usual first line, a
plain ``pipevisor/handshake``, with ``json`` alone; only then does it import
the engine (``pipevisor.kit._engine``), which speaks through ``pipevisor.protocol.Peer``
and starts asyncio if an ``async def`` handler is registered. Any first line
that is not that plain handshake (garbage, another request, an odd id, a
version range with no overlap) goes to the engine unread, so every answer
but the happy handshake comes from ``pipevisor.protocol``.
"""

from __future__ import annotations

import json
import os
import sys
from types import MappingProxyType

from pipevisor.kit.binding import Signature
from pipevisor.protocol.constants import (
    DEFAULT_GRACE_SECONDS,
    HANDSHAKE,
    LOG_LEVELS,
    METHOD_NAME_MAX,
    PROTOCOL_NAME,
    PROTOCOL_VERSION_PAIRS,
    RESERVED_PREFIXES,
    negotiate_pairs,
    parse_range_pairs,
    parse_version_pair,
)
from pipevisor.protocol.constants import DEFAULT_MAX_LINE_BYTES as DEFAULT_MAX_LINE_BYTES

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    from pipevisor.kit._engine import Engine
    from pipevisor.kit.context import Context
    from pipevisor.kit.log_handler import HostLogHandler
    from pipevisor.kit.schema import SchemaCheck
    from pipevisor.protocol import Version, VersionRange

    F = TypeVar("F", bound=Callable[..., Any])

# The protocol's values come from pipevisor.protocol.constants, which imports nothing:
# reading them costs no orjson, dataclasses or enum before the handshake answer.
DEFAULT_GRACE = DEFAULT_GRACE_SECONDS  # SPEC 9.1 after EOF; SPEC 7.3 when graceSeconds is absent
KIT_VERSIONS = PROTOCOL_VERSION_PAIRS
LEVELS = LOG_LEVELS
_RESERVED_PREFIXES = RESERVED_PREFIXES
_FAST_LINE_LIMIT = 1 << 20  # a first line longer than this is left to the engine's framing
_CO_COROUTINE = 0x80  # code flag of an ``async def`` function (inspect.CO_COROUTINE)


parse_version = parse_version_pair  # ``MAJOR.MINOR`` -> (major, minor); raises ValueError


def parse_range(obj: object) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """A ``protocolVersions`` value as pipevisor.protocol.VersionRange.parse reads it, or None."""
    try:
        return parse_range_pairs(obj)
    except ValueError:
        return None


def plain_handshake_params(params: dict[str, Any]) -> bool:
    """True only if ``params`` surely validate against ``schemas/handshake.params.json``.

    Conservative and cheap (no jsonschema, ~50 ms to import): anything unusual,
    such as an integer written as ``1.0``, answers False, and the engine then
    decides with the schema itself. A test holds True to "the schema accepts".
    """
    if params.get("protocol") != PROTOCOL_NAME:
        return False
    host, plugin = params.get("host"), params.get("plugin")
    if (type(host) is not dict or type(host.get("name")) is not str
            or type(host.get("version")) is not str or type(plugin) is not dict
            or type(plugin.get("name")) is not str):
        return False
    if "pid" in host and not _int_at_least(host["pid"], 1):
        return False
    if "instance" in plugin and not _int_at_least(plugin["instance"], 0):
        return False
    versions = params.get("protocolVersions")
    if type(versions) is not dict or parse_range(versions) is None:
        return False
    for key in ("interfaces", "hostMethods"):
        if key in params and not _version_lists(params[key]):
            return False
    if "limits" in params and not _limits_ok(params["limits"]):
        return False
    caps = params.get("capabilities", {})
    if type(caps) is not dict or type(caps.get("cancel", False)) is not bool:
        return False
    log = caps.get("log", {})
    return type(log) is dict and log.get("minLevel", "debug") in LOG_LEVELS


def _int_at_least(value: object, low: int) -> bool:
    return type(value) is int and value >= low


def _version_lists(value: object) -> bool:
    if type(value) is not dict:
        return False
    for versions in value.values():
        if type(versions) is not list or not versions or len(set(map(str, versions))) != len(
                versions) or not all(type(v) is str for v in versions):
            return False
        try:
            for v in versions:
                parse_version_pair(v)
        except ValueError:
            return False
    return True


def _limits_ok(limits: object) -> bool:
    if type(limits) is not dict:
        return False
    for key in ("memoryBytes", "openFiles", "processes"):
        if limits.get(key) is not None and not _int_at_least(limits[key], 1):
            return False
    for key in ("cpuPercent", "callTimeoutSeconds"):
        value = limits.get(key)
        if value is not None and not (type(value) in (int, float) and value > 0):
            return False
    return "maxLineBytes" not in limits or _int_at_least(limits["maxLineBytes"], 1)


class _Method:
    """One registered handler and what is known about it before any call."""

    __slots__ = ("fn", "info", "is_async", "params_check", "result_check", "signature")

    def __init__(self, fn: Callable[..., Any], info: dict[str, str],
                 params_check: SchemaCheck | None, result_check: SchemaCheck | None) -> None:
        self.fn = fn
        # asyncio.iscoroutinefunction would import asyncio; the code flag says the same
        # for the plain functions Signature.of accepts.
        self.is_async = bool(fn.__code__.co_flags & _CO_COROUTINE)
        self.signature = Signature.of(fn)
        self.info = info  # the handshake's methods.<name>: {version?, description?}
        self.params_check = params_check
        self.result_check = result_check


class Plugin:
    """A plugin: register handlers with :meth:`method`, then call :meth:`run`.

    ``threads`` bounds the pool sync handlers run in; ``max_concurrency`` is
    declared to the host (which then never sends more calls at once) and is
    left undeclared by default.
    """

    def __init__(self, name: str, version: str = "0.0.0", *, threads: int = 4,
                 max_concurrency: int | None = None,
                 protocol_versions: VersionRange | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, not {threads}")
        self.name = name
        self.version = version
        self.threads = threads
        self.max_concurrency = max_concurrency
        self._versions = KIT_VERSIONS if protocol_versions is None else (
            (protocol_versions.min.major, protocol_versions.min.minor),
            (protocol_versions.max.major, protocol_versions.max.minor))
        self.methods: dict[str, _Method] = {}
        self.notifications: dict[str, _Method] = {}
        """Handlers of notifications from the host (``@plugin.notification``)."""
        self.uses: dict[str, dict[str, str]] = {}
        """Host methods this plugin calls, declared in the handshake (``uses_host_method``)."""
        self.host_methods: MappingProxyType[str, tuple[str, ...]] = MappingProxyType({})
        """What the host serves to us, from the handshake (empty before it)."""
        self.connected = False  # handshake answered and the host still reading
        self.max_line_bytes = DEFAULT_MAX_LINE_BYTES
        """The longest input line accepted: the handshake's ``limits.maxLineBytes``."""
        self._chosen: tuple[int, int] | None = None
        self._min_log_rank = 0  # index into LEVELS, from capabilities.log.minLevel
        self._out_fd = -1
        self._engine: Engine | None = None
        self._log_handler: HostLogHandler | None = None
        self.fast_handshake = False
        """True when the handshake was answered before protocol and asyncio were imported."""

    @property
    def protocol_versions(self) -> VersionRange:
        """The protocol versions this plugin speaks (imports protocol when read)."""
        from pipevisor.protocol import Version, VersionRange

        (a, b), (c, d) = self._versions
        return VersionRange(Version(a, b), Version(c, d))

    @property
    def protocol_version(self) -> Version | None:
        """The version chosen in the handshake, None before it."""
        if self._chosen is None:
            return None
        from pipevisor.protocol import Version

        return Version(*self._chosen)

    # ----------------------------------------------------------- registration

    def method(self, name: str, version: str | None = "1.0", *,
               description: str | None = None,
               params_schema: dict[str, Any] | None = None,
               result_schema: dict[str, Any] | None = None) -> Callable[[F], F]:
        """Decorator: serve ``name`` with the decorated function.

        ``version`` is the interface version declared in the handshake. A
        ``params_schema`` is checked before the handler runs (-32602 on a
        mismatch); a ``result_schema`` after it (-32603: the plugin broke its
        own contract). Bad registrations fail here, at import, not on a call.
        """
        _check_name(name)
        info: dict[str, str] = {}
        if version is not None:
            info["version"] = "{}.{}".format(*parse_version(version))
        if description is not None:
            info["description"] = description

        def register(fn: F) -> F:
            if name in self.methods:
                raise ValueError(f"method {name!r} is registered twice")
            self.methods[name] = _Method(fn, info, _schema(params_schema, f"{name} params_schema"),
                                         _schema(result_schema, f"{name} result_schema"))
            return fn

        return register

    def notification(self, name: str, *,
                     params_schema: dict[str, Any] | None = None) -> Callable[[F], F]:
        """Decorator: handle the notification ``name`` sent by the host (SPEC 4.4).

        The handler (``def`` or ``async def``) gets the params bound as for a
        method, without ``ctx``; what it returns is ignored. Notifications get
        no answer, so params that fail ``params_schema`` or do not fit the
        handler, and exceptions it raises, are logged (a ``pipevisor/log``
        warning or error, and stderr) and nothing is sent. Notifications are
        not declared in the handshake; one the plugin has no handler for is
        ignored, as SPEC 4.4 requires. Reserved names (``pipevisor/``, ``rpc.``,
        ``$/``) are refused: the kit handles ``pipevisor/cancel`` itself.
        """
        _check_name(name)

        def register(fn: F) -> F:
            if name in self.notifications:
                raise ValueError(f"notification {name!r} is registered twice")
            self.notifications[name] = _Method(fn, {}, _schema(params_schema,
                                                               f"{name} params_schema"), None)
            return fn

        return register

    def uses_host_method(self, name: str, version: str | None = "1.0") -> None:
        """Declare a host method this plugin calls and the interface version it was
        built against (SPEC section 8). The host then talks that version with it:
        result members newer than it are dropped, and on another major the method is
        disabled for this plugin (its calls answer -31005) instead of failing in ways
        the plugin cannot read. Undeclared host methods are still callable."""
        _check_name(name)
        self.uses[name] = ({"version": "{}.{}".format(*parse_version(version))}
                           if version is not None else {})

    # -------------------------------------------------------------------- run

    def run(self) -> None:
        """Serve on stdin/stdout until shutdown or EOF, then exit with status 0.

        Stdout is taken for the protocol first: file descriptor 1 is pointed
        at stderr, so a ``print()`` in a handler (or a library writing to fd 1)
        ends up in the log instead of corrupting the protocol.
        """
        self._out_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        pending, eof = self._first_line()
        from pipevisor.kit._engine import Engine

        engine = self._engine = Engine(self)
        busy = engine.run(pending, eof)
        sys.stderr.flush()
        if busy:
            os._exit(0)  # a sync handler is still running: its thread cannot be stopped
        sys.exit(0)

    def _first_line(self) -> tuple[bytes, bool]:
        """Read up to the first line and answer it if it is a plain handshake.

        Returns the bytes the engine must still read (all of them when the
        first line was not answered here) and whether stdin is at its end.
        """
        buf = b""
        while True:
            start = 0
            while (nl := buf.find(b"\n", start)) >= 0:
                line = buf[start:nl]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line and not line.isspace():  # blank lines are skipped, as framing does
                    answer = self._fast_handshake(line)
                    if answer is None:
                        return buf[start:], False
                    self._write_first(answer)
                    self.connected = True
                    self.fast_handshake = True
                    return buf[nl + 1:], False
                start = nl + 1
            buf = buf[start:]
            if len(buf) > _FAST_LINE_LIMIT:
                return buf, False
            try:
                chunk = os.read(0, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                return buf, True
            buf += chunk

    def _fast_handshake(self, line: bytes) -> bytes | None:
        """The answer to a plain handshake line, or None to leave the line to the engine.

        Only lines json and orjson (protocol's parser) read alike are taken:
        orjson refuses lone surrogates, NaN and infinite floats and reads
        integers beyond 64 bits as floats, where json accepts or keeps them, so
        a line with a ``\\u`` escape, such a number or an odd id is left alone.
        Only success is answered here; every error answer comes from protocol.
        """
        if b"\\u" in line:
            return None
        try:
            msg = json.loads(line, parse_constant=_refuse_constant, parse_float=_finite_float,
                             parse_int=_int64)
        except (ValueError, RecursionError):
            return None
        if (type(msg) is not dict or msg.get("jsonrpc") != "2.0"
                or msg.get("method") != HANDSHAKE or not msg.keys() <= _REQUEST_KEYS):
            return None
        ident = msg.get("id")
        if type(ident) is not str and type(ident) is not int:  # floats and null: the engine
            return None
        params = msg.get("params")
        if type(params) is not dict:
            return None
        if not plain_handshake_params(params):
            return None  # the engine checks them against the schema and answers -32602
        offered = parse_range(params.get("protocolVersions"))
        if offered is None:
            return None
        chosen = self._negotiate(offered)
        if chosen is None:
            return None
        self._accept_handshake(params, chosen)
        answer = {"jsonrpc": "2.0", "id": ident, "result": self._handshake_result(chosen)}
        return json.dumps(answer, separators=(",", ":"), allow_nan=False).encode() + b"\n"

    def _negotiate(self, offered: tuple[tuple[int, int], tuple[int, int]]
                   ) -> tuple[int, int] | None:
        """SPEC 6.4: the highest version in both ranges, None when they do not overlap."""
        return negotiate_pairs(self._versions, offered)

    def _accept_handshake(self, params: dict[str, Any], chosen: tuple[int, int]) -> None:
        """Take what the handshake params say; shared by the fast path and the engine."""
        self._chosen = chosen
        hosted = params.get("hostMethods")
        if isinstance(hosted, dict):
            self.host_methods = MappingProxyType({k: tuple(v) for k, v in hosted.items()
                                                  if isinstance(v, list)})
        caps = params.get("capabilities")
        log = caps.get("log") if isinstance(caps, dict) else None
        level = log.get("minLevel") if isinstance(log, dict) else None
        if level in LEVELS:
            self._min_log_rank = LEVELS.index(level)
            if self._log_handler is not None:
                self._log_handler.min_rank = self._min_log_rank
        limits = params.get("limits")
        size = limits.get("maxLineBytes") if isinstance(limits, dict) else None
        if type(size) is int and size >= 1:
            self.max_line_bytes = size

    def _handshake_result(self, chosen: tuple[int, int]) -> dict[str, Any]:
        """SPEC 6.3, as pipevisor.protocol.HandshakeResult.to_json writes it (a test
        compares them)."""
        caps: dict[str, Any] = {"cancel": True, "progress": True, "shutdown": True}
        if self.max_concurrency is not None:
            caps["maxConcurrency"] = self.max_concurrency
        out: dict[str, Any] = {
            "protocolVersion": f"{chosen[0]}.{chosen[1]}",
            "plugin": {"name": self.name, "version": self.version},
            "methods": {name: dict(m.info) for name, m in self.methods.items()},
            "capabilities": caps,
        }
        if self.uses:
            out["hostMethods"] = {name: dict(v) for name, v in self.uses.items()}
        return out

    def _write_first(self, data: bytes) -> None:
        """Write the handshake answer; the engine does not exist yet, nor any other writer."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out_fd, view):]
        except OSError:  # the host is gone before reading our answer: nothing left to do
            sys.exit(0)

    # ------------------------------------------- what handlers reach through ctx

    def _notify(self, method: str, params: Any) -> None:
        if self._engine is not None:
            self._engine.notify(method, params)

    def _progress(self, ctx: Context, params: dict[str, Any]) -> None:
        if self._engine is not None:
            self._engine.progress(ctx, params)

    async def call_host(self, method: str, params: Any = None, *,
                        timeout: float | None = 30.0) -> Any:
        """Call a host method from a coroutine; see :meth:`Context.call_host`."""
        if self._engine is None:
            from pipevisor.kit.errors import HostCallError

            raise HostCallError(-31001, f"cannot call {method}: not connected to the host",
                                method=method)
        return await self._engine.call_host(method, params, timeout)

    def call_host_blocking(self, method: str, params: Any = None, *,
                           timeout: float | None = 30.0) -> Any:
        """Call a host method and wait in this thread; see :meth:`Context.call_host_blocking`."""
        if self._engine is None:
            from pipevisor.kit.errors import HostCallError

            raise HostCallError(-31001, f"cannot call {method}: not connected to the host",
                                method=method)
        return self._engine.call_host_blocking(method, params, timeout)


_REQUEST_KEYS = frozenset(("jsonrpc", "id", "method", "params"))


def _check_name(name: str) -> None:
    """SPEC 5: no reserved prefix, 1 to 256 characters."""
    if name.startswith(RESERVED_PREFIXES):
        raise ValueError(f"method name {name!r} is reserved (pipevisor/, rpc., $/)")
    if not 1 <= len(name) <= METHOD_NAME_MAX:
        raise ValueError(f"method name must be 1..{METHOD_NAME_MAX} characters, got {len(name)}")


def _schema(schema: dict[str, Any] | None, where: str) -> SchemaCheck | None:
    if schema is None:
        return None
    from pipevisor.kit.schema import SchemaCheck  # jsonschema: ~50 ms, only if asked

    return SchemaCheck(schema, where)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (nan cannot come from a JSON number)
        raise ValueError(f"{text} overflows a double")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f"{text} does not fit in 64 bits")
    return value
