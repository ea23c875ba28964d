"""Durations as people type them: ``30s``, ``30m``, ``1h``, ``1d``, ``1h30m`` or plain seconds.

One parser for every command-line option that takes a length of time, so ``token --ttl 1h``
and ``forward --ping-interval 30s`` read alike and refuse the same mistakes (zero where it
means nothing, negatives, junk) with the same words.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Final

__all__ = ["DURATION_HELP", "duration_arg", "parse_duration"]

DURATION_HELP: Final = "30s, 30m, 1h, 1d, 1h30m or plain seconds"
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# ASCII digits only (\d also matches other scripts' digits), and few: the sum stays finite.
_NUMBER: Final = r"[0-9]{1,12}(?:\.[0-9]{1,9})?"
_PLAIN: Final = re.compile(_NUMBER)
_PART: Final = re.compile(rf"({_NUMBER})([smhd])")
_UNITED: Final = re.compile(rf"(?:{_NUMBER}[smhd]){{1,4}}")


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """Seconds in ``text``: a number of seconds, or numbers with units ``s m h d`` in a row.

    Raises:
        ValueError: For anything else (signs, exponents, ``inf``, spaces inside), and for
            zero unless ``allow_zero``. The message says what is accepted.
    """
    value = text.strip().lower()
    if _PLAIN.fullmatch(value):
        seconds = float(value)
    elif _UNITED.fullmatch(value):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    elif value.startswith("-") and (_PLAIN.fullmatch(value[1:]) or _UNITED.fullmatch(value[1:])):
        raise ValueError(f"{text!r}: a duration cannot be negative")
    else:
        raise ValueError(f"{text!r} is not a duration (use {DURATION_HELP})")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{text!r}: must be more than 0 seconds")
    return seconds


def duration_arg(*, allow_zero: bool = False) -> Callable[[str], float]:
    """An argparse ``type=``: seconds, or a one-line ``argument --x: ...`` usage error."""

    def convert(text: str) -> float:
        try:
            return parse_duration(text, allow_zero=allow_zero)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = "duration"
    return convert
