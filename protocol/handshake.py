"""The handshake and the reserved methods, for both ends.

Every method whose name starts with ``pipevisor/`` (ours), ``rpc.`` (JSON-RPC's
own reservation) or ``$/`` (LSP's) is reserved; a plugin may not declare one,
so the protocol's messages can never collide with a plugin's methods.

A connection opens with exactly one ``pipevisor/handshake`` request from the
host. The protocol version is the highest version inside both sides' ranges;
when the ranges do not overlap the plugin answers with
``UNSUPPORTED_PROTOCOL_VERSION`` and ``data = {"supported", "requested"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pipevisor.protocol.constants import (
    CANCEL,
    HANDSHAKE,
    LOG,
    LOG_LEVELS,
    PING,
    PROGRESS,
    PROTOCOL_NAME,
    PROTOCOL_VERSION_PAIRS,
    RESERVED_PREFIXES,
    SHUTDOWN,
    is_reserved,
)
from pipevisor.protocol.errors import (
    ErrorCode,
    ErrorObject,
    HandshakeError,
    VersionError,
    local_error,
    standard_error,
)
from pipevisor.protocol.schema_store import first_error
from pipevisor.protocol.versions import Version, VersionRange, negotiate

PROTOCOL_VERSIONS = VersionRange(Version(*PROTOCOL_VERSION_PAIRS[0]),
                                 Version(*PROTOCOL_VERSION_PAIRS[1]))
"""The protocol versions this package speaks."""

__all__ = ["CANCEL", "HANDSHAKE", "LOG", "LOG_LEVELS", "PING", "PROGRESS", "PROTOCOL_NAME",
           "PROTOCOL_VERSIONS", "RESERVED_PREFIXES", "SHUTDOWN", "HandshakeParams",
           "HandshakeResult", "MethodInfo", "check_params", "choose_version", "is_reserved",
           "unsupported_version"]


def check_params(name: str, params: Any) -> None:
    """Validate the params of a reserved message against its schema file.

    Raises:
        HandshakeError: carrying an ``Invalid params`` error with the path of the fault.
    """
    problem = first_error(name, params)
    if problem is not None:
        raise HandshakeError(standard_error(ErrorCode.INVALID_PARAMS, f"{name}: {problem}"))


@dataclass(frozen=True, slots=True)
class HandshakeParams:
    """What the host says first."""

    plugin_name: str
    host_name: str = "pipevisor"
    host_version: str = "0"
    host_pid: int | None = None
    instance: int = 0
    protocol_versions: VersionRange = PROTOCOL_VERSIONS
    interfaces: MappingProxyType[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    host_methods: MappingProxyType[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    limits: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    cancel: bool = True
    min_log_level: str = "debug"

    def to_json(self) -> dict[str, Any]:
        host: dict[str, Any] = {"name": self.host_name, "version": self.host_version}
        if self.host_pid is not None:
            host["pid"] = self.host_pid
        return {
            "protocol": PROTOCOL_NAME,
            "protocolVersions": self.protocol_versions.to_json(),
            "host": host,
            "plugin": {"name": self.plugin_name, "instance": self.instance},
            "interfaces": {k: list(v) for k, v in self.interfaces.items()},
            "hostMethods": {k: list(v) for k, v in self.host_methods.items()},
            "limits": dict(self.limits),
            "capabilities": {"cancel": self.cancel, "log": {"minLevel": self.min_log_level}},
        }

    @classmethod
    def from_json(cls, params: Any) -> HandshakeParams:
        check_params("handshake.params", params)
        caps = params.get("capabilities", {})
        return cls(
            plugin_name=params["plugin"]["name"],
            host_name=params["host"]["name"],
            host_version=params["host"]["version"],
            host_pid=params["host"].get("pid"),
            instance=params["plugin"].get("instance", 0),
            protocol_versions=VersionRange.parse(params["protocolVersions"]),
            interfaces=MappingProxyType(
                {k: tuple(v) for k, v in params.get("interfaces", {}).items()}
            ),
            host_methods=MappingProxyType(
                {k: tuple(v) for k, v in params.get("hostMethods", {}).items()}
            ),
            limits=MappingProxyType(dict(params.get("limits", {}))),
            cancel=bool(caps.get("cancel", False)),
            min_log_level=caps.get("log", {}).get("minLevel", "debug"),
        )


@dataclass(frozen=True, slots=True)
class MethodInfo:
    version: Version | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.version is not None:
            out["version"] = str(self.version)
        if self.description is not None:
            out["description"] = self.description
        return out


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What the plugin answers."""

    protocol_version: Version
    plugin_name: str
    plugin_version: str
    methods: MappingProxyType[str, MethodInfo]
    cancel: bool = False
    progress: bool = False
    shutdown: bool = False
    max_concurrency: int | None = None
    host_methods: MappingProxyType[str, Version | None] = field(
        default_factory=lambda: MappingProxyType({}))
    """Host methods the plugin calls, with the version it was built against."""

    def to_json(self) -> dict[str, Any]:
        caps: dict[str, Any] = {
            "cancel": self.cancel,
            "progress": self.progress,
            "shutdown": self.shutdown,
        }
        if self.max_concurrency is not None:
            caps["maxConcurrency"] = self.max_concurrency
        out: dict[str, Any] = {
            "protocolVersion": str(self.protocol_version),
            "plugin": {"name": self.plugin_name, "version": self.plugin_version},
            "methods": {name: info.to_json() for name, info in self.methods.items()},
            "capabilities": caps,
        }
        if self.host_methods:
            out["hostMethods"] = {name: ({"version": str(v)} if v is not None else {})
                                  for name, v in self.host_methods.items()}
        return out

    @classmethod
    def from_json(cls, result: Any, offered: VersionRange = PROTOCOL_VERSIONS) -> HandshakeResult:
        """Read and check the plugin's answer (host side).

        Raises:
            HandshakeError: the answer is malformed, picks a version outside
                ``offered``, or declares a reserved method name.
        """
        problem = first_error("handshake.result", result)
        if problem is not None:
            raise HandshakeError(
                local_error(ErrorCode.INVALID_RESPONSE, f"invalid handshake result: {problem}")
            )
        chosen = Version.parse(result["protocolVersion"])
        if chosen not in offered:
            raise HandshakeError(
                unsupported_version(
                    offered,
                    VersionRange(chosen, chosen),
                    f"plugin chose protocol {chosen}, outside the offered {offered}",
                )
            )
        methods: dict[str, MethodInfo] = {}
        for name, info in result["methods"].items():
            if is_reserved(name):
                raise HandshakeError(
                    local_error(ErrorCode.INVALID_RESPONSE,
                                f"plugin declares the reserved method name {name!r}")
                )
            version = info.get("version")
            methods[name] = MethodInfo(
                Version.parse(version) if version is not None else None, info.get("description")
            )
        caps = result.get("capabilities", {})
        host_methods = {
            name: Version.parse(info["version"]) if "version" in info else None
            for name, info in result.get("hostMethods", {}).items()}
        return cls(
            protocol_version=chosen,
            plugin_name=result["plugin"]["name"],
            plugin_version=result["plugin"]["version"],
            methods=MappingProxyType(methods),
            cancel=bool(caps.get("cancel", False)),
            progress=bool(caps.get("progress", False)),
            shutdown=bool(caps.get("shutdown", False)),
            max_concurrency=caps.get("maxConcurrency"),
            host_methods=MappingProxyType(host_methods),
        )


def unsupported_version(
    supported: VersionRange, requested: VersionRange, message: str | None = None
) -> ErrorObject:
    """The error a side sends when the ranges do not overlap; it names both."""
    return ErrorObject(
        ErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
        message or f"no common protocol version: supported {supported}, requested {requested}",
        {"supported": supported.to_json(), "requested": requested.to_json()},
    )


def choose_version(params: HandshakeParams, supported: VersionRange) -> Version:
    """Plugin side: pick the protocol version for this connection.

    Raises:
        HandshakeError: with ``UNSUPPORTED_PROTOCOL_VERSION`` naming both ranges.
    """
    try:
        return negotiate(supported, params.protocol_versions)
    except VersionError as exc:
        raise HandshakeError(unsupported_version(supported, params.protocol_versions,
                                                 str(exc))) from exc
