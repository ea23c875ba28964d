"""The development relay's key survives a restart: kept in data_dir 0600, or from the env."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hybridrelay.errors import ConfigError
from hybridrelay.relay.dev_key import DEV_KEY_FILE, development_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_writes_a_private_key_and_the_next_reads_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old = os.umask(0)  # a umask of 0 must not leave the key world-readable
    try:
        first = development_key(data, {})
    finally:
        os.umask(old)
    assert first.origin == "new"
    assert first.path == data / DEV_KEY_FILE
    assert _mode(data / DEV_KEY_FILE) == 0o600
    assert _mode(data) == 0o700
    again = development_key(data, {})
    assert again.origin == "file"
    assert again.value == first.value
    assert len(first.value) >= 40


def test_the_environment_wins_and_is_not_written(tmp_path: Path) -> None:
    key = development_key(tmp_path, {"HYBRIDRELAY_DEV_KEY": "my-own-dev-key-0123456789"})
    assert key.value == "my-own-dev-key-0123456789"
    assert key.origin == "environment"
    assert not (tmp_path / DEV_KEY_FILE).exists()


def test_a_loose_key_file_is_tightened(tmp_path: Path) -> None:
    (tmp_path / DEV_KEY_FILE).write_text("kept-key-0123456789\n", "utf-8")
    (tmp_path / DEV_KEY_FILE).chmod(0o644)
    assert development_key(tmp_path, {}).value == "kept-key-0123456789"
    assert _mode(tmp_path / DEV_KEY_FILE) == 0o600


def test_an_empty_key_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / DEV_KEY_FILE).write_text("\n", "utf-8")
    with pytest.raises(ConfigError) as info:
        development_key(tmp_path, {})
    assert str(tmp_path / DEV_KEY_FILE) in str(info.value)
    assert "delete it" in str(info.value)
