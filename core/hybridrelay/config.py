"""Shared config machinery: TOML into checked values, env overrides, secrets that never print.

Components define their own frozen dataclasses (``relay/config.py``, later the
agent's) and use the readers here, which raise :class:`ConfigError` naming the
file, the key and the reason. Unknown keys are errors (rathole's
``deny_unknown_fields``), so a typo is never silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hybridrelay.errors import ConfigError

__all__ = [
    "Secret",
    "Table",
    "load_toml",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Secret:
    """A key or token; its repr and str never show the value."""

    value: str

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"


def load_toml(path: str | Path) -> dict[str, object]:
    """Read a TOML file; unreadable files and syntax errors become ConfigError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(str(p), "", "file not found") from exc
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), "", f"invalid TOML: {exc}") from exc


class Table:
    """Typed, checked access to one TOML table; remembers which keys were read."""

    def __init__(self, data: Mapping[str, object], *, path: str, prefix: str) -> None:
        self._data = data
        self._path = path
        self._prefix = prefix
        self._seen: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else key

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(self._path, self._key(key), reason)

    def has(self, key: str) -> bool:
        return key in self._data

    def _get(self, key: str) -> object | None:
        self._seen.add(key)
        return self._data.get(key)

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, not {type(value).__name__}")
        return value

    def req_str(self, key: str) -> str:
        value = self.get_str(key)
        if value is None or not value:
            raise self.error(key, "is required")
        return value

    def get_int(self, key: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {type(value).__name__}")
        if not minimum <= value <= maximum:
            raise self.error(key, f"must be between {minimum} and {maximum}")
        return value

    def get_float(
        self, key: str, default: float, *, minimum: float = 0.0, maximum: float = 1e9
    ) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {type(value).__name__}")
        if not minimum <= float(value) <= maximum:
            raise self.error(key, f"must be between {minimum:g} and {maximum:g}")
        return float(value)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {type(value).__name__}")
        return value

    def str_list(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return tuple(default)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings")
        return tuple(value)

    def tables(self, key: str) -> list[Table]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(key, "must be an array of tables ([[...]])")
        return [
            Table(v, path=self._path, prefix=f"{self._key(key)}[{i}]") for i, v in enumerate(value)
        ]

    def table(self, key: str) -> Table:
        value = self._get(key)
        if value is None:
            return Table({}, path=self._path, prefix=self._key(key))
        if not isinstance(value, dict):
            raise self.error(key, "must be a table")
        return Table(value, path=self._path, prefix=self._key(key))

    def reject_unknown(self) -> None:
        """Raise for the first key that no reader asked for."""
        for key in self._data:
            if key not in self._seen:
                raise self.error(key, "unknown key")

    def env_override(self, key: str, env: Mapping[str, str] | None = None) -> str | None:
        """Return ``HYBRIDRELAY_{PREFIX}_{KEY}`` from the environment, if set."""
        source = os.environ if env is None else env
        name = "HYBRIDRELAY_" + self._key(key).upper().replace(".", "_")
        return source.get(name)
