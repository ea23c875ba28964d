"""Which listener ``Set-Cookie`` values would set the dashboard's session cookie."""

from __future__ import annotations

import pytest

from hybridrelay.relay.dashboard.sessions import COOKIE, sets_dashboard_cookie


@pytest.mark.parametrize(
    "value",
    [
        f"{COOKIE}=x",
        f"{COOKIE}=x; Path=/$dashboard; HttpOnly",
        f"\t{COOKIE} =x",
        f"{COOKIE.upper()}=x",
        f"__Host-{COOKIE}=x; Secure; Path=/",
        f"__secure-{COOKIE}=x; Secure",
        f"{COOKIE}",  # no "=": a browser keeps a nameless cookie the header carries bare
        f"a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT, {COOKIE}=x",
    ],
)
def test_the_dashboards_cookie_is_recognised(value: str) -> None:
    assert sets_dashboard_cookie(value)


@pytest.mark.parametrize(
    "value",
    [
        "theme=dark; Path=/",
        f"{COOKIE}_theme=dark",
        f"x{COOKIE}=1",
        f"theme={COOKIE}",  # the name only as a value
        "a=1; Expires=Wed, 21 Oct 2015 07:28:00 GMT",
        "",
    ],
)
def test_other_cookies_are_not(value: str) -> None:
    assert not sets_dashboard_cookie(value)
