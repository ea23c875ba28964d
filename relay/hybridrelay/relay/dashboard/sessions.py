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

__all__ = ["LoginLimiter", "Role", "Session", "SessionTable"]

Role = Literal["operator", "viewer"]

# How many addresses the failed-login table remembers; past this the oldest entries go
# (an attacker spraying from many addresses frees their own slots, never locks others).
_MAX_TRACKED_ADDRESSES: Final = 10_000
_WINDOW: Final = 60.0  # seconds: dashboard_login_failures counts per minute


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
