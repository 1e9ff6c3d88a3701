"""Optional JSON Schema checks of a method's params and result.

jsonschema is imported only when a method declares a schema, so a plugin
that declares none never pays its ~50 ms import at start-up.
"""

from __future__ import annotations

from typing import Any


class SchemaCheck:
    """A compiled schema; ``problem(value)`` is None or one sentence with the JSON path."""

    __slots__ = ("_validator",)

    def __init__(self, schema: dict[str, Any], where: str) -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"{where}: not a valid JSON Schema: {exc.message}") from exc
        self._validator = Draft202012Validator(schema)

    def problem(self, value: Any) -> str | None:
        from jsonschema.exceptions import best_match

        error = best_match(self._validator.iter_errors(value))
        if error is None:
            return None
        return f"{error.json_path}: {error.message}"
