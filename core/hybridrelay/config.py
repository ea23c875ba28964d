"""Shared config machinery: TOML into checked values, env overrides, secrets that never print.

Components define their own frozen dataclasses (``relay/config.py``, later the
agent's) and use the readers here, which raise :class:`ConfigError` naming the
file, the key and the reason. Unknown keys are errors (rathole's
``deny_unknown_fields``), so a typo is never silently ignored.

Each config kind also declares a :class:`Schema`: which keys each table knows and
which of them name files. A mistake found while reading is first checked against
it (:func:`unknown_keys_first`): a typo in a required key (``key_nmae``) then
reports the unknown key with a did-you-mean, never the missing one. Relative paths
written in a file resolve against that file's directory (:func:`resolve_path`);
paths from the command line or the environment stay relative to the working
directory.
"""

from __future__ import annotations

import difflib
import enum
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hybridrelay.errors import ConfigError, MultiConfigError

__all__ = [
    "Field",
    "Schema",
    "Secret",
    "Table",
    "file_problems",
    "load_toml",
    "readable_file",
    "resolve_path",
    "suggest",
    "unknown_keys",
    "unknown_keys_first",
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


class Field(enum.Enum):
    """What a schema knows about a key that is not a table."""

    VALUE = "value"  # any value; the reader checks it
    FILE = "file"  # a path to a file that must be readable
    FILES = "files"  # a list of such paths
    DIR = "dir"  # a directory (created when missing)
    FREE = "free"  # a table whose keys are the user's (header names, keyword arguments)


@dataclass(frozen=True, slots=True)
class Schema:
    """The keys one table knows: a :class:`Field`, or the Schema of a sub-table or of
    each table of an array of tables (a list may mix tables and plain values)."""

    keys: Mapping[str, Field | Schema]

    @classmethod
    def of(cls, *values: str, **tables: Field | Schema) -> Schema:
        """``values`` are plain keys; ``tables`` the rest, by name."""
        return cls({**dict.fromkeys(values, Field.VALUE), **tables})


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the known key closest to a typo, or nothing."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _joined(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def unknown_keys(
    data: Mapping[str, object], schema: Schema, *, path: str, prefix: str = ""
) -> list[ConfigError]:
    """Every key of ``data`` (and its tables) that ``schema`` does not know, in file order."""
    found: list[ConfigError] = []
    for key, value in data.items():
        where = _joined(prefix, key)
        entry = schema.keys.get(key)
        if entry is None:
            found.append(ConfigError(path, where, "unknown key" + suggest(key, schema.keys)))
        elif isinstance(entry, Schema):
            if isinstance(value, dict):
                found += unknown_keys(value, entry, path=path, prefix=where)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        found += unknown_keys(item, entry, path=path, prefix=f"{where}[{i}]")
    return found


def unknown_keys_first(
    data: Mapping[str, object], schema: Schema, path: str, read: Callable[[], T]
) -> T:
    """``read()``; when it finds a mistake and the file has unknown keys, report those.

    A reader stops at the first problem, which for a misspelt required key is "is
    required"; the unknown spelling is the real mistake, so it wins (all of them at
    once, as :class:`MultiConfigError`).
    """
    try:
        return read()
    except ConfigError as exc:
        unknown = unknown_keys(data, schema, path=path)
        if unknown:
            raise MultiConfigError(unknown) from exc
        raise


def resolve_path(source: str | Path, value: str) -> Path:
    """A path written in the config file ``source``: relative ones are relative to its
    directory (as a command line's are to the working directory); ``~`` expands."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(source).parent / path


def readable_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file ("cannot read X: <OS reason>"), or None."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _dir_problem(path: Path) -> str | None:
    if path.exists() and not path.is_dir():
        return f"{path} is not a directory"
    return None


def file_problems(
    data: Mapping[str, object], schema: Schema, *, path: str, prefix: str = ""
) -> list[ConfigError]:
    """Every file or directory named in ``data`` that cannot be used, resolved against
    ``path``'s directory; keys the schema does not know or values of the wrong type
    are left to the readers."""
    found: list[ConfigError] = []
    for key, value in data.items():
        where = _joined(prefix, key)
        entry = schema.keys.get(key)
        if isinstance(entry, Schema):
            if isinstance(value, dict):
                found += file_problems(value, entry, path=path, prefix=where)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        found += file_problems(item, entry, path=path, prefix=f"{where}[{i}]")
        elif entry in (Field.FILE, Field.DIR) and isinstance(value, str) and value:
            check = readable_file if entry is Field.FILE else _dir_problem
            why = check(resolve_path(path, value))
            if why:
                found.append(ConfigError(path, where, why))
        elif entry is Field.FILES and isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, str) and item:
                    why = readable_file(resolve_path(path, item))
                    if why:
                        found.append(ConfigError(path, f"{where}[{i}]", why))
    return found


class Table:
    """Typed, checked access to one TOML table; remembers which keys were read."""

    def __init__(self, data: Mapping[str, object], *, path: str, prefix: str) -> None:
        self._data = data
        self._path = path
        self._prefix = prefix
        self._seen: set[str] = set()

    @property
    def source(self) -> str:
        """The config file the table was read from."""
        return self._path

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

    def get_file(self, key: str) -> str | None:
        """A readable file named by ``key``, relative to the config file's directory."""
        value = self.get_str(key)
        if value is None:
            return None
        if not value:
            raise self.error(key, "must not be empty")
        path = resolve_path(self._path, value)
        why = readable_file(path)
        if why:
            raise self.error(key, why)
        return str(path)

    def reject_unknown(self) -> None:
        """Raise for the first key that no reader asked for."""
        for key in self._data:
            if key not in self._seen:
                raise self.error(key, "unknown key" + suggest(key, self._seen))

    def env_override(self, key: str, env: Mapping[str, str] | None = None) -> str | None:
        """Return ``HYBRIDRELAY_{PREFIX}_{KEY}`` from the environment, if set."""
        source = os.environ if env is None else env
        name = "HYBRIDRELAY_" + self._key(key).upper().replace(".", "_")
        return source.get(name)
