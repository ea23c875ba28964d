"""Which ``Host`` headers the dashboard's own address answers: plain rules, no I/O.

DNS rebinding: a page on ``evil.example`` re-points that name at ``127.0.0.1`` and then
calls "its own" origin, which is now the dashboard's port; the browser sends
``Host: evil.example``. Checking the name the request was sent to is what stops it: a
rebinding page can never make a browser send a name other than its own, and never an IP
literal (an IP literal has no DNS to rebind). So the dashboard answers only

- an IP literal equal to its listen address (any IP literal when it listens on every
  address: it cannot know the machine's addresses, and a literal is never rebound);
- the loopback names (``localhost``, ``127.0.0.1``, ``::1``) when it listens on loopback
  or on every address;
- the names in ``[relay] dashboard_hosts`` (a tunnel's or a proxy's name for it).

The port in the header is not checked: a tunnel (``ssh -L 9190:...``) or a proxy in
front of it names a port of its own.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = ["DashboardHosts", "host_name"]

_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - naming them, not binding
_MAX_HOST: Final = 300  # a DNS name is at most 253 characters; an IPv6 literal far fewer


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_name(header: str | None) -> str | None:
    """The lower-case name of a ``Host`` header without its port; None if it is not one."""
    if header is None or not header or len(header) > _MAX_HOST:
        return None
    text = header.strip().lower()
    if text.startswith("["):  # [v6]:port
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return name if _ip(name) is not None else None
    name, sep, port = text.partition(":")
    if sep and not port.isdigit():
        return None
    name = name.removesuffix(".")  # "localhost." is "localhost"
    if not name or any(not (c.isascii() and (c.isalnum() or c in "-._")) for c in name):
        return None
    return name


@dataclass(frozen=True, slots=True)
class DashboardHosts:
    names: frozenset[str]
    any_ip: bool  # listening on every address: any IP literal is the dashboard's

    @classmethod
    def for_listen(cls, listen_host: str, extra: tuple[str, ...]) -> DashboardHosts:
        host = listen_host.strip("[]").lower()
        names = {name.lower().removesuffix(".") for name in extra}
        wildcard = host in _WILDCARDS
        address = _ip(host)
        if wildcard or host in _LOOPBACK_NAMES or (address is not None and address.is_loopback):
            names |= _LOOPBACK_NAMES
        if not wildcard:
            names.add(host)
        return cls(names=frozenset(names), any_ip=wildcard)

    def allows(self, header: str | None) -> bool:
        name = host_name(header)
        if name is None:
            return False
        if name in self.names:
            return True
        address = _ip(name)
        if address is None:
            return False
        # "127.000.0.1" is not a literal ipaddress accepts; "::0:1" is "::1" written longer.
        return self.any_ip or str(address) in self.names
