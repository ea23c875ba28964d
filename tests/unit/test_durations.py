"""``hybridrelay.durations``: what a person types for a length of time, and what is refused."""

from __future__ import annotations

import argparse

import pytest

from hybridrelay.durations import duration_arg, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("30m", 1800),
        ("1h", 3600),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("90", 90),
        ("2.5", 2.5),
        ("1.5h", 5400),
        (" 10M ", 600),  # surrounding blanks and upper case are forgiven
        ("000045", 45),
    ],
)
def test_accepted(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


JUNK = [
    "",
    " ",
    "h",
    "1x",
    "1 h",
    "1h 30m",
    "1e3",
    "inf",
    "nan",
    "0x10",
    "1.",
    ".5",
    "1h-5m",
    "+5",
    "5ms",
    "1_000",
    "1,5",
    "\u0661\u0662",  # Arabic-Indic digits, which \\d matches
]


@pytest.mark.parametrize("text", JUNK)
def test_junk_is_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration \(use 30s, 30m, 1h, 1d"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-1", "-5m", "-0"])
def test_negatives_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["0", "0s", "0h0m", "0.0"])
def test_zero_is_refused_unless_allowed(text: str) -> None:
    with pytest.raises(ValueError, match="must be more than 0 seconds"):
        parse_duration(text)
    assert parse_duration(text, allow_zero=True) == 0


def test_length_is_bounded() -> None:
    assert parse_duration("999999999999d") == 999999999999 * 86400
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("9" * 13)
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration("1s" * 5)  # at most four unit parts


def test_as_an_argparse_type_errors_name_the_option() -> None:
    parser = argparse.ArgumentParser(prog="p", exit_on_error=False)
    parser.add_argument("--ttl", type=duration_arg())
    parser.add_argument("--ping", type=duration_arg(allow_zero=True))
    args = parser.parse_args(["--ttl", "1h", "--ping", "0"])
    assert (args.ttl, args.ping) == (3600, 0)
    with pytest.raises(argparse.ArgumentError, match="argument --ttl: '0': must be more than 0"):
        parser.parse_args(["--ttl", "0"])
    with pytest.raises(argparse.ArgumentError, match="argument --ttl: 'soon' is not a duration"):
        parser.parse_args(["--ttl", "soon"])
