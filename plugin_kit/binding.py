"""Matching a call's params to a handler's arguments, without ``inspect``.

``inspect`` costs several milliseconds to import; reading the code object
directly is enough for plain functions and keeps plugin start-up fast. The
signature is read once, at registration; each call then checks names and
counts against it and reports the first problem in words the caller can act on.
"""

from __future__ import annotations

TYPE_CHECKING = False  # no typing import at start-up; mypy reads this name as typing's
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_VARARGS = 0x04
_VARKEYWORDS = 0x08


class ParamsError(Exception):
    """The params do not fit the handler; the message names what is wrong."""


class Signature:
    """What a handler accepts. A plain class: dataclasses imports inspect (~5 ms)."""

    __slots__ = ("keyword_only", "positional", "required", "var_keyword", "var_positional",
                 "wants_context")

    def __init__(self, *, positional: tuple[str, ...], keyword_only: tuple[str, ...],
                 required: frozenset[str], var_positional: bool, var_keyword: bool,
                 wants_context: str | None) -> None:
        self.positional = positional  # may be passed by position or by name
        self.keyword_only = keyword_only
        self.required = required
        self.var_positional = var_positional
        self.var_keyword = var_keyword
        self.wants_context = wants_context  # the argument that receives the Context

    @classmethod
    def of(cls, fn: Callable[..., Any], context_name: str = "ctx") -> Signature:
        code = getattr(fn, "__code__", None)
        if code is None:
            raise TypeError(f"handler {fn!r} must be a plain function (def or async def)")
        npos, nkw = code.co_argcount, code.co_kwonlyargcount
        names = code.co_varnames[: npos + nkw]
        positional, keyword_only = names[:npos], names[npos:]
        if hasattr(fn, "__self__"):  # a bound method: self is supplied already
            positional = positional[1:]
        defaults = fn.__defaults__ or ()
        optional = set(positional[len(positional) - len(defaults):] if defaults else ())
        optional |= set(fn.__kwdefaults__ or {})
        wants = context_name if context_name in names else None
        required = frozenset(n for n in names if n not in optional and n != wants
                             and n in positional + keyword_only)
        return cls(
            positional=tuple(n for n in positional if n != wants),
            keyword_only=tuple(n for n in keyword_only if n != wants),
            required=required,
            var_positional=bool(code.co_flags & _VARARGS),
            var_keyword=bool(code.co_flags & _VARKEYWORDS),
            wants_context=wants,
        )

    def bind(self, params: Any) -> tuple[list[Any], dict[str, Any]]:
        """Return (args, kwargs) for the call, or raise ParamsError naming the problem."""
        if params is None:
            params = {}
        if type(params) is dict:
            if not self.var_keyword:
                for name in params:
                    if name not in self.positional and name not in self.keyword_only:
                        raise ParamsError(f"unexpected param {name!r}; expected "
                                          f"{self._expected()}")
            for name in self.required:
                if name not in params:
                    raise ParamsError(f"missing required param {name!r}")
            return [], params
        if type(params) is list:
            if len(params) > len(self.positional) and not self.var_positional:
                raise ParamsError(f"takes at most {len(self.positional)} positional params, "
                                  f"got {len(params)}")
            for name in self.positional[len(params):]:
                if name in self.required:
                    raise ParamsError(f"missing required param {name!r} "
                                      f"(position {self.positional.index(name)})")
            for name in self.keyword_only:
                if name in self.required:
                    raise ParamsError(f"param {name!r} is keyword-only; pass params as an object")
            return params, {}
        raise ParamsError(f"params must be an object or an array, not {type(params).__name__}")

    def _expected(self) -> str:
        names = self.positional + self.keyword_only
        return ", ".join(repr(n) for n in names) if names else "no params"
