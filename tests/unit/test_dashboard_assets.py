"""The dashboard's static files against what the relay publishes and promises (issue 14)."""

from __future__ import annotations

import re
from importlib import resources

from hybridrelay.relay.mgmt.events import JOB_OP_TYPES, LISTENER_OP_TYPES, STORE_OP_TYPES

STATIC = resources.files("hybridrelay.relay.dashboard") / "static"


def _text(name: str) -> str:
    return (STATIC / name).read_text("utf-8")


def test_the_event_page_listens_for_every_op_type() -> None:
    # EventSource hears a named event only with a listener for that name.
    listed = set(
        re.findall(
            r'"([A-Za-z]+)"', _text("pages.js").split("const OP_TYPES = [")[1].split("];")[0]
        )
    )
    published = {*STORE_OP_TYPES.values(), *LISTENER_OP_TYPES, *JOB_OP_TYPES.values()}
    assert listed == published


def test_no_inline_script_or_style_and_only_relative_urls() -> None:
    page = _text("index.html")
    assert re.findall(r"<script[^>]*>", page) == ['<script type="module" src="static/app.js">']
    assert "<style" not in page
    assert " style=" not in page
    assert " on" not in re.sub(r"<(?:a|button|input|label|form)\b", "", page).replace(" one", ""), (
        "no inline event handlers"
    )
    script = "\n".join(
        entry.read_text("utf-8") for entry in STATIC.iterdir() if entry.name.endswith(".js")
    )
    # Under a proxy's prefix an absolute path would leave the dashboard.
    for absolute in ("/$dashboard", "/$mgmt", "/api", "/static", "/login", "/logout", "/session"):
        for quote in "\"'`":
            assert quote + absolute not in script, absolute
    assert "innerHTML" not in script
    # No other origin (the SVG namespace is a name, never fetched).
    remote = script.replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in remote
    assert "https://" not in remote
