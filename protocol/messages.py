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


@dataclass(frozen=True, slots=True, init=False)
class Response:
    """A successful response."""

    id: RequestId
    result: Any

    def __init__(self, id: RequestId, result: Any) -> None:
        # A frozen dataclass's own __init__ sets each field through object.__setattr__;
        # the slot descriptors do the same in about two thirds of the time, and one of
        # these is made for every answer read (the hot path of a pipelined call).
        _set_response_id(self, id)
        _set_response_result(self, result)

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id, "result": self.result}


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    id: RequestId
    error: ErrorObject

    def to_json(self) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": self.id, "error": self.error.to_json()}


_set_response_id = Response.__dict__["id"].__set__
_set_response_result = Response.__dict__["result"].__set__

Message: TypeAlias = Request | Notification | Response | ErrorResponse
