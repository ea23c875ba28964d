"""``hybridrelay admin`` argument parsing and settings, without a relay."""

from __future__ import annotations

from pathlib import Path

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


def test_events_tail_since_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    def since(text: str) -> tuple[str, str]:
        value: tuple[str, str] = (
            _parser().parse_args(["admin", "events", "tail", "--since", text]).since
        )
        return value

    assert since("0") == ("id", "0")
    assert since("0042") == ("id", "42")
    kind, when = since("10m")
    ago = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(when)
    assert kind == "time"
    assert dt.timedelta(minutes=9) < ago < dt.timedelta(minutes=11)
    assert since("2026-01-31T13:00:00+01:00") == ("time", "2026-01-31T12:00:00Z")
    for bad in ("2026-01-31T12:00:00", "yesterday", "-5", "10x"):
        with pytest.raises(SystemExit):
            since(bad)
        assert "--since" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["admin", "events", "tail", "--count", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_tls_failure_names_the_cause_and_the_fix() -> None:
    from types import SimpleNamespace

    from hybridrelay.client.admin_cli import _Settings, _tls_failure

    def failure(message: str, settings: _Settings) -> str:
        exc = SimpleNamespace(certificate_error=SimpleNamespace(verify_message=message))
        return _tls_failure("https://relay:8443", settings, exc)  # type: ignore[arg-type]

    from_env = _Settings("HYBRIDRELAY_ADMIN_RELAY", None, None)
    line = failure("unable to get local issuer certificate", from_env)
    assert line.startswith("cannot verify the TLS certificate of https://relay:8443 (from ")
    assert "--ca-file FILE or set HYBRIDRELAY_ADMIN_CA_FILE" in line
    line = failure("Hostname mismatch, certificate is not valid for 'relay'.", from_env)
    assert "use a host the certificate names in the relay URL (HYBRIDRELAY_ADMIN_RELAY)" in line
    with_ca = _Settings("--relay", "ca.pem", "--ca-file")
    line = failure("unable to get local issuer certificate", with_ca)
    assert "the CA bundle ca.pem (from --ca-file) did not verify it" in line


def test_an_unreadable_ca_file_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_RELAY", "https://127.0.0.1:1")
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY_NAME", "root")
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_KEY", "k" * 32)
    monkeypatch.setenv("HYBRIDRELAY_ADMIN_CA_FILE", str(tmp_path / "nope.pem"))
    assert main(["admin", "hc", "list"]) == 2
    err = capsys.readouterr().err
    assert "HYBRIDRELAY_ADMIN_CA_FILE" in err
    assert "nope.pem" in err
    # The flag wins: its file is the one named.
    assert main(["admin", "--ca-file", str(tmp_path / "flag.pem"), "hc", "list"]) == 2
    err = capsys.readouterr().err
    assert "--ca-file" in err
    assert "flag.pem" in err
    assert "nope.pem" not in err
