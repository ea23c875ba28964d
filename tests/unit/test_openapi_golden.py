"""The management API's OpenAPI document equals the reviewed snapshot in openapi_golden.json.

The schemas of the stored resources are generated from one declaration per resource
(``relay/store/schema.py``), so a change to a field shows up here as a document change
to review. When a change is intended (a new resource, a new field), regenerate the
snapshot and read its diff before committing it::

    .venv/bin/python -m tests.unit.test_openapi_golden
    git diff tests/unit/openapi_golden.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from hybridrelay.relay.mgmt.openapi import build_openapi, openapi_json

GOLDEN: Final = Path(__file__).with_name("openapi_golden.json")


def _differences(want: object, got: object, where: str = "$") -> list[str]:
    """JSON paths where two documents differ (dict order ignored, list order kept)."""
    if isinstance(want, dict) and isinstance(got, dict):
        found: list[str] = []
        for key in sorted(want.keys() | got.keys()):
            if key not in got:
                found.append(f"{where}.{key}: missing")
            elif key not in want:
                found.append(f"{where}.{key}: not in the snapshot")
            else:
                found.extend(_differences(want[key], got[key], f"{where}.{key}"))
        return found
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [
            d
            for i, (w, g) in enumerate(zip(want, got, strict=True))
            for d in _differences(w, g, f"{where}[{i}]")
        ]
    return [] if want == got and type(want) is type(got) else [f"{where}: {want!r} != {got!r}"]


def _render(document: object) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


def test_the_document_is_the_reviewed_snapshot() -> None:
    snapshot = json.loads(GOLDEN.read_text(encoding="utf-8"))
    differences = _differences(snapshot, build_openapi())
    assert not differences, (
        "the OpenAPI document differs from tests/unit/openapi_golden.json (regenerate with "
        "`python -m tests.unit.test_openapi_golden` if intended):\n" + "\n".join(differences)
    )


def test_the_served_text_is_the_same_document() -> None:
    assert json.loads(openapi_json()) == build_openapi()


def test_the_difference_finder_sees_a_changed_leaf() -> None:
    assert _differences({"a": [{"b": 1}]}, {"a": [{"b": True}]}) == ["$.a[0].b: 1 != True"]
    assert _differences({"a": 1}, {"b": 1}) == ["$.a: missing", "$.b: not in the snapshot"]


if __name__ == "__main__":
    GOLDEN.write_text(_render(build_openapi()), encoding="utf-8")
