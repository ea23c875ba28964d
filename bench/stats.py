"""Pure helpers shared by the benches: medians with min-max, paired ratios, percentiles, tables.

No I/O and no clocks here, so ``tests/unit/test_bench_stats.py`` covers all of it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "EN_DASH",
    "MINUS",
    "TIMES",
    "Row",
    "fmt",
    "markdown_table",
    "paired",
    "percentile",
    "spread",
    "text_table",
]


# Typography for tables and docs (spelled as escapes so no source line holds a look-alike).
EN_DASH = "\u2013"
MINUS = "\u2212"
TIMES = "\u00d7"


def spread(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """Median, min, max and every value (rounded), for one series of runs."""
    if not values:
        raise ValueError("spread() of no values")
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def paired(a: Sequence[float], b: Sequence[float], *, op: str = "ratio") -> list[float]:
    """Per-round a/b (``ratio``) or a-b (``diff``) of two series measured in the same rounds.

    Pairing by round keeps slow drift of the machine out of the figure: both members of a
    pair ran back to back.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired() needs two equally long non-empty series ({len(a)}, {len(b)})")
    if op == "ratio":
        return [x / y for x, y in zip(a, b, strict=True)]
    if op == "diff":
        return [x - y for x, y in zip(a, b, strict=True)]
    raise ValueError(f"unknown op {op!r}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile() of no values")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def fmt(value: float | None, unit: str = "", digits: int | None = None) -> str:
    """A number for a table: thousands separators, sensible precision, optional unit."""
    if value is None:
        return "—"
    if digits is None:
        magnitude = abs(value)
        digits = 0 if magnitude >= 1000 else 1 if magnitude >= 100 else 2 if magnitude >= 1 else 3
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip() if unit else text


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One line of the summary table.

    ``a`` and ``b`` describe the two things compared (empty for absolute figures);
    ``result`` is the ratio (or value) as median [min-max]; ``met`` is None when the
    figure has no target or could not be judged (skipped section).
    """

    section: str
    figure: str
    a: str = ""
    b: str = ""
    result: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        return cls(
            **{k: data.get(k, "") for k in ("section", "figure", "a", "b", "result")},
            target=data.get("target", ""),
            met=data.get("met"),
            note=data.get("note", ""),
        )


_HEADERS = ("#", "figure", "A", "B", f"A/B or value: median [min{EN_DASH}max]", "target", "met?")


def _met_text(met: bool | None) -> str:
    return "—" if met is None else "yes" if met else "**no**"


def _cells(rows: Sequence[Row], *, markdown: bool) -> list[list[str]]:
    return [
        [
            row.section,
            row.figure,
            row.a,
            row.b,
            row.result + (f" ({row.note})" if row.note else ""),
            row.target,
            _met_text(row.met) if markdown else _met_text(row.met).replace("*", ""),
        ]
        for row in rows
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    lines = ["| " + " | ".join(_HEADERS) + " |", "|" + "---|" * len(_HEADERS)]
    lines += [
        "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
        for cells in _cells(rows, markdown=True)
    ]
    return "\n".join(lines)


def text_table(rows: Sequence[Row], width: int = 48) -> str:
    """A plain aligned table for the terminal; long cells are cut to ``width`` and the
    rows' notes are listed under the table instead of in it."""
    cells = [list(_HEADERS)]
    cells += [
        [*c[:4], row.result, *c[5:]]
        for c, row in zip(_cells(rows, markdown=False), rows, strict=True)
    ]
    cells = [[c if len(c) <= width else c[: width - 1] + "…" for c in row] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADERS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {row.section} {row.figure}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + (["notes:", *notes] if notes else []))
