"""The development relay's key: from ``HYBRIDRELAY_DEV_KEY``, else kept in ``data_dir``.

A key made afresh at every start turned each restart of ``hybridrelay relay serve``
into 401s for every agent and forwarder started with the key it printed. The first
start writes a random key to ``{data_dir}/dev-key`` (0600, in a 0700 directory, like
the store); later starts read it back. ``HYBRIDRELAY_DEV_KEY`` wins over the file and
is never written to it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from hybridrelay.errors import ConfigError
from hybridrelay.relay.private_files import open_private, private_dir, tighten

__all__ = ["DEV_KEY_ENV", "DEV_KEY_FILE", "DevKey", "development_key"]

DEV_KEY_ENV: Final = "HYBRIDRELAY_DEV_KEY"
DEV_KEY_FILE: Final = "dev-key"
_MAX_KEY: Final = 1024


@dataclass(frozen=True, slots=True)
class DevKey:
    value: str
    origin: Literal["environment", "file", "new"]
    path: Path | None  # the file it was read from or written to


def development_key(data_dir: Path, env: Mapping[str, str]) -> DevKey:
    """The development rule's key, and where it came from.

    Raises:
        ConfigError: the key file cannot be read or written, or is empty.
    """
    given = env.get(DEV_KEY_ENV)
    if given:
        return DevKey(given, "environment", None)
    path = data_dir / DEV_KEY_FILE
    try:
        private_dir(data_dir)
        tighten(path)
        try:
            text = path.read_text("utf-8")[:_MAX_KEY].strip()
        except FileNotFoundError:
            key = secrets.token_urlsafe(32)
            with open_private(path, "wb") as out:
                out.write(key.encode("ascii") + b"\n")
            return DevKey(key, "new", path)
    except OSError as exc:
        raise ConfigError(
            str(path), "", f"cannot keep the development key: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "", "is not text; delete it to make a new key") from exc
    if not text:
        raise ConfigError(str(path), "", "is empty; delete it to make a new key")
    return DevKey(text, "file", path)
