"""The four JSON-RPC 2.0 message shapes as immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from pipevisor.protocol.errors import ErrorObject

RequestId: TypeAlias = str | int | float | None
Params: TypeAlias = dict[str, Any] | list[Any] | None


@dataclass(frozen=True, slots=True)
class Request:
    id: RequestId
    method: str
    params: Params = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jsonrpc": "2.0", "id": self.id, "method": self.method}
        if self.params is not None:
            out["params"] = self.params
        return out


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: Params = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method}
        if self.params is not None:
            out["params"] = self.params
        return out


@dataclass(frozen=True, slots=True)
class Response:
    """A successful response."""

    id: RequestId
    result: Any

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id, "result": self.result}


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    id: RequestId
    error: ErrorObject

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id, "error": self.error.to_json()}


Message: TypeAlias = Request | Notification | Response | ErrorResponse
