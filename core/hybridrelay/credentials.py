"""Who ``listen``, ``forward`` and ``token`` sign as: a SAS rule or a registered device.

On the command line, a rule is ``--key-name`` with ``--key``/``--key-env``/``--key-file``
(cli.py's options). A device is ``--device-id`` with its key from ``--device-key-env VAR``,
``--device-key-file FILE``, ``--device-key KEY`` or, when none is given,
``$HYBRIDRELAY_DEVICE_KEY``. The two are exclusive: a device signs with its own key
(``hybridrelay.protocol.device_sas``), never a rule's.

In the agent's ``[[mappings]]`` and the forwarder's ``[[bindings]]``, a device is
``device_id`` with exactly one of ``device_key``, ``device_key_file`` (relative to the
config file) and ``device_key_env``; these exclude ``key_name`` and the rule's keys
(:func:`device_from_table`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from hybridrelay.config import Secret, Table
from hybridrelay.errors import ConfigError
from hybridrelay.protocol.device_sas import DeviceTokenProvider, check_device_id, decode_device_key
from hybridrelay.protocol.sas import SasTokenProvider, TokenProvider

__all__ = [
    "DEVICE_CONFIG_KEYS",
    "DEVICE_FLAGS",
    "DEVICE_KEY_ENV",
    "add_device_options",
    "device_from_table",
    "device_key",
    "device_token_args",
    "token_provider",
    "uses_device",
]

DEVICE_KEY_ENV: Final = "HYBRIDRELAY_DEVICE_KEY"
# Attribute names of the device options (for "cannot be combined with --config" checks).
DEVICE_FLAGS: Final = ("device_id", "device_key", "device_key_env", "device_key_file")
_RULE_FLAGS: Final = ("key_name", "key", "key_env", "key_file")
_CLI: Final = "<command line>"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device-id`` and the device key options (exclusive with the rule's key options)."""
    parser.add_argument(
        "--device-id",
        metavar="ID",
        help="sign as this device of the relay's registry (a device SAS token,"
        " sr={host}/devices/{ID}) instead of a SAS rule; excludes --key-name and its keys",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--device-key-env",
        metavar="VAR",
        help=f"read the device's primary or secondary key (base64) from this environment"
        f" variable (default: {DEVICE_KEY_ENV})",
    )
    group.add_argument(
        "--device-key-file", metavar="FILE", help="read the device key (base64) from this file"
    )
    group.add_argument(
        "--device-key",
        metavar="KEY",
        help="the device key (visible in the process list; prefer --device-key-env)",
    )


def uses_device(args: argparse.Namespace) -> bool:
    """True when any device option was given."""
    return any(getattr(args, name, None) for name in DEVICE_FLAGS)


def device_key(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The device key the options name, checked to be a device key (base64 of 16-64 bytes).

    Raises:
        ConfigError: Not given, unreadable, empty or not a device key; names the option.
    """
    if args.device_key:
        source, where, value = _CLI, "--device-key", str(args.device_key)
    elif args.device_key_file:
        source, where = args.device_key_file, ""
        try:
            value = Path(args.device_key_file).read_text("utf-8").strip()
        except OSError as exc:
            raise ConfigError(source, "", f"cannot read device key file: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(source, "", "the device key file is not text") from exc
    else:
        variable = args.device_key_env or DEVICE_KEY_ENV
        source, where, value = "<environment>", variable, env.get(variable, "")
        if not value:
            hint = (
                ""
                if args.device_key_env
                else " (give --device-key-env VAR, --device-key-file FILE or --device-key KEY)"
            )
            raise ConfigError(source, variable, f"is not set{hint}")
    if not value.strip():
        raise ConfigError(source, where, "the device key is empty")
    try:
        decode_device_key(value)
    except ValueError as exc:
        raise ConfigError(source, where, str(exc)) from None
    return value


def _device_id(args: argparse.Namespace) -> str:
    if not args.device_id:
        given = next(name for name in DEVICE_FLAGS if getattr(args, name, None))
        raise ConfigError(_CLI, _flag(given), "needs --device-id")
    rule = next((name for name in _RULE_FLAGS if getattr(args, name, None)), None)
    if rule is not None:
        raise ConfigError(
            _CLI,
            _flag(rule),
            "cannot be combined with --device-id (a device signs with its own key;"
            " give --key-name and a key, or --device-id and a device key)",
        )
    why = check_device_id(str(args.device_id))
    if why:
        raise ConfigError(_CLI, "--device-id", why)
    return str(args.device_id)


def token_provider(
    args: argparse.Namespace, read_rule_key: Callable[[argparse.Namespace], str]
) -> TokenProvider:
    """The provider the options describe: a device's, or the rule's.

    Args:
        args: Parsed options of ``listen`` or ``forward``.
        read_rule_key: Reads the rule key from ``--key``/``--key-env``/``--key-file``.

    Raises:
        ConfigError: Options mixed, missing or malformed; names the option.
    """
    if uses_device(args):
        device_id = _device_id(args)
        return DeviceTokenProvider(device_id, device_key(args, os.environ))
    if not args.key_name:
        raise ConfigError(_CLI, "--key-name", "is required (or --device-id for a device)")
    return SasTokenProvider(args.key_name, read_rule_key(args))


def device_token_args(args: argparse.Namespace) -> tuple[str, str] | None:
    """(device id, key) for ``token --device-id``, or None when no device option is given."""
    if not uses_device(args):
        return None
    return _device_id(args), device_key(args, os.environ)


# --- config files -----------------------------------------------------------------------

DEVICE_CONFIG_KEYS: Final = ("device_id", "device_key", "device_key_file", "device_key_env")
_DEVICE_KEY_KEYS: Final = DEVICE_CONFIG_KEYS[1:]
_RULE_CONFIG_KEYS: Final = ("key_name", "key", "key_file", "key_env")


def device_from_table(
    table: Table, base: Path, env: Mapping[str, str]
) -> tuple[str, Secret] | None:
    """The device a ``[[mappings]]`` or ``[[bindings]]`` table signs as, if it names one.

    Args:
        table: The table; its device keys are marked as read.
        base: The config file's directory (a relative ``device_key_file`` is under it).
        env: Where ``device_key_env`` is looked up.

    Returns:
        (deviceId, device key), or None when the table has none of the device keys.

    Raises:
        ConfigError: Device and rule keys mixed, no or several device keys, an
            unreadable file, an unset variable, or a value that is no device key or id.
    """
    given = [name for name in DEVICE_CONFIG_KEYS if table.has(name)]
    if not given:
        return None
    rule = next((name for name in _RULE_CONFIG_KEYS if table.has(name)), None)
    if rule is not None:
        raise table.error(
            rule,
            "cannot be combined with device_id (a device signs with its own key;"
            " give key_name and a key, or device_id and a device key)",
        )
    device_id = table.get_str("device_id")
    if device_id is None:
        raise table.error(given[0], "needs device_id")
    why = check_device_id(device_id)
    if why:
        raise table.error("device_id", why)
    keys = [name for name in _DEVICE_KEY_KEYS if table.has(name)]
    if len(keys) != 1:
        where = keys[1] if keys else "device_id"
        raise table.error(
            where, "give exactly one of device_key, device_key_file and device_key_env"
        )
    which = keys[0]
    text = table.req_str(which)
    if which == "device_key":
        value = text
    elif which == "device_key_env":
        value = env.get(text, "")
        if not value:
            raise table.error(which, f"environment variable {text} is not set")
    else:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            value = path.read_text("utf-8").strip()
        except OSError as exc:
            raise table.error(which, f"cannot read {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise table.error(which, f"{path} is not UTF-8 text") from exc
    try:
        decode_device_key(value)
    except ValueError as exc:
        raise table.error(which, str(exc)) from None
    return device_id, Secret(value.strip())
