"""``hybridrelay admin`` argument parsing and settings, without a relay."""

from __future__ import annotations

import pytest

from hybridrelay.cli import _parser, main


def test_options_before_or_after_the_subcommand() -> None:
    args = _parser().parse_args(
        ["admin", "--relay", "http://a", "rule", "regenerate", "r", "--key", "primary", "--table"]
    )
    assert (args.relay, args.key_type, args.table) == ("http://a", "primary", True)
    args = _parser().parse_args(["admin", "hc", "create", "x", "--no-client-auth", "--http", "no"])
    assert (args.client_auth, args.http, args.max_listeners) == (False, False, None)


def test_missing_settings_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("HYBRIDRELAY_ADMIN_RELAY", "HYBRIDRELAY_ADMIN_KEY_NAME", "HYBRIDRELAY_ADMIN_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["admin", "hc", "list"]) == 2
    assert "--relay" in capsys.readouterr().err
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_RELAY", "http://127.0.0.1:1")
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY_NAME", "root")
    assert main(["admin", "hc", "list"]) == 2
    assert "HYBRIDRELAY_ADMIN_KEY" in capsys.readouterr().err
    assert main(["admin", "--relay", "ftp://x", "hc", "list", "--key-env", "PATH"]) == 2
