"""Decode one JSON object from a peer (a request body, an import line) or say why not.

Hostile input gets a 400, never a 500: NaN/Infinity, numbers beyond 64 bits, lone
surrogates that cannot be stored, and nesting deep enough to exhaust the stack.
"""

from __future__ import annotations

import json
from typing import Final

from hybridrelay.errors import ValidationError

__all__ = ["parse_json_object"]

_MAX_JSON_INT: Final = 2**63


def parse_json_object(raw: bytes | str, field: str) -> dict[str, object]:
    """The JSON object in ``raw``; ValidationError naming ``field`` otherwise."""

    def reject_constant(name: str) -> object:
        raise ValidationError(field, f"{name} is not a JSON number")

    try:
        doc = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ValidationError(field, "not valid JSON") from exc
    _check_values(doc, field)
    if not isinstance(doc, dict):
        raise ValidationError(field, "must be a JSON object")
    return {str(k): v for k, v in doc.items()}


def _check_values(doc: object, field: str) -> None:
    # Iterative, so a deeply nested document cannot exhaust the stack here.
    stack: list[object] = [doc]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValidationError(field, "strings must be valid Unicode text") from exc
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            if not -_MAX_JSON_INT <= value <= _MAX_JSON_INT:
                raise ValidationError(field, "a number is out of range")
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
