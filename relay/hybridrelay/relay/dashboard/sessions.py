"""Dashboard sessions and the failed-login limiter: plain state, no I/O (issue 14).

A login exchanges a Manage credential for a session: a random id in an HttpOnly,
SameSite=Strict cookie, and a random CSRF token the page sends back in a header on
every write. The credential stays here, in memory, and never goes back to the browser:
each dashboard call is made to the management API *with* it, so the API's own checks
(a regenerated key, a deleted rule, a rule that lost Manage, an expired JWT) end a
session at once. Sessions are this node's: behind a load balancer, a cluster's
dashboard needs sticky sessions (or a login per node).
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "COOKIE",
    "COOKIE_NAMES",
    "LoginLimiter",
    "Role",
    "Session",
    "SessionTable",
    "sets_dashboard_cookie",
]

Role = Literal["operator", "viewer"]

# The session cookie's name. Browsers keep cookies per host, not per port: a response
# from the relay's public port (a listener's, in HTTP mode) could set this name on the
# dashboard's host and path when both share a host name, so HTTP mode drops a listener's
# Set-Cookie that names it (http_mode.py; docs/security.md).
COOKIE: Final = "hybridrelay_session"
COOKIE_NAMES: Final = frozenset({COOKIE})  # every cookie the dashboard sets (CSRF is a header)
# The prefixes browsers give a meaning to: "__Host-hybridrelay_session" is another cookie,
# but dropping it too costs nothing and keeps a later switch to the prefix covered.
_PREFIXES: Final = ("", "__host-", "__secure-")
_NAMES_FOLDED: Final = frozenset(p + name.lower() for p in _PREFIXES for name in COOKIE_NAMES)

# How many addresses the failed-login table remembers; past this the oldest entries go
# (an attacker spraying from many addresses frees their own slots, never locks others).
_MAX_TRACKED_ADDRESSES: Final = 10_000
_WINDOW: Final = 60.0  # seconds: dashboard_login_failures counts per minute


def sets_dashboard_cookie(set_cookie: str) -> bool:
    """Whether a ``Set-Cookie`` value would set one of the dashboard's cookies.

    The name is what comes before the first ``=`` of the first ``;``-part, trimmed, as
    browsers read it (RFC 6265 §5.2); compared without case, so that no spelling a
    browser might treat alike gets through. A value that several cookies were folded into
    with commas is looked at cookie by cookie, in case some client splits it.
    """
    for part in set_cookie.split(","):
        pair = part.split(";", 1)[0]
        # Without "=", a browser takes the pair as a value with no name, which the Cookie
        # header then carries bare, where a server may read it as the name: drop it too.
        name = pair.split("=", 1)[0]
        if name.strip(" \t").lower() in _NAMES_FOLDED:
            return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    id: str  # the cookie's value
    csrf: str
    credential: str  # an Authorization header value: a SAS token or "Bearer <jwt>"
    who: str  # sas:<rule> or jwt:<subject>: safe to log and show
    role: Role
    expires_at: float

    def csrf_matches(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


class SessionTable:
    """At most ``max_sessions`` live sessions, each ending ``ttl`` seconds after login."""

    def __init__(self, *, ttl: float, max_sessions: int, now: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_sessions = max_sessions
        self._now = now
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(
        self, *, credential: str, who: str, role: Role, expires_at: float | None
    ) -> Session | None:
        """A new session, or None when the table is full of live ones."""
        now = self._now()
        if len(self._sessions) >= self.max_sessions:
            self._purge(now)
            if len(self._sessions) >= self.max_sessions:
                return None
        ends = now + self.ttl if expires_at is None else min(now + self.ttl, expires_at)
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            credential=credential,
            who=who,
            role=role,
            expires_at=ends,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._now():
            del self._sessions[session_id]
            return None
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _purge(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]


class LoginLimiter:
    """Failed logins per address and minute; ``blocked`` once ``limit`` were made."""

    def __init__(self, *, limit: int, now: Callable[[], float]) -> None:
        self.limit = limit
        self._now = now
        # address -> (window start, failures in it); oldest first
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()

    def blocked(self, address: str) -> bool:
        entry = self._failures.get(address)
        if entry is None:
            return False
        started, count = entry
        if self._now() - started >= _WINDOW:
            del self._failures[address]
            return False
        return count >= self.limit

    def failed(self, address: str) -> None:
        now = self._now()
        started, count = self._failures.pop(address, (now, 0))
        if now - started >= _WINDOW:
            started, count = now, 0
        self._failures[address] = (started, count + 1)
        while len(self._failures) > _MAX_TRACKED_ADDRESSES:
            self._failures.popitem(last=False)
