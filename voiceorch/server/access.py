"""Who may open a voice session, and how many at once.

Checked on the WebSocket upgrade request, before any session state exists: an Origin outside
the allowlist is refused with HTTP 403, a missing or wrong token with HTTP 401. A connection
beyond ``max_sessions`` is accepted and closed at once with 1013 ("try again later"), so a
load balancer or client can go elsewhere. Tokens are compared in constant time and never
logged.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

import attrs


@attrs.frozen(kw_only=True)
class AccessPolicy:
    #: When set, a connection must present it: ``Authorization: Bearer <token>`` or, for
    #: browsers (which cannot set headers on a WebSocket), ``?token=<token>`` in the URL.
    token: str | None = attrs.field(default=None, repr=False)
    #: When not empty, a request carrying an ``Origin`` header (browsers do) must come from
    #: one of these origins, e.g. ``https://app.example.com``.
    allowed_origins: frozenset[str] = frozenset()
    max_sessions: int = 32

    def refusal(self, path: str, headers: list[tuple[str, str]]) -> tuple[int, str] | None:
        """``(http_status, reason)`` if the upgrade request must be refused, else None."""
        by_name: dict[str, str] = {}
        for name, value in headers:
            by_name.setdefault(name.lower(), value)
        origin = by_name.get("origin")
        if self.allowed_origins and origin is not None and origin not in self.allowed_origins:
            return 403, "this origin is not allowed"
        if self.token is not None and not _presents(self.token, path, by_name.get("authorization", "")):
            return 401, "a valid token is required (Authorization: Bearer <token>, or ?token=)"
        return None


def _presents(token: str, path: str, authorization: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    candidates = [value.strip()] if scheme.lower() == "bearer" else []
    candidates += parse_qs(urlsplit(path).query).get("token", [])
    return any(hmac.compare_digest(candidate.encode(), token.encode()) for candidate in candidates)


@attrs.define
class Admission:
    """Counts the sessions of one server against ``max_sessions``. Not thread-safe (Trio)."""

    max_sessions: int
    active: int = 0

    def try_enter(self) -> bool:
        if self.active >= self.max_sessions:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1
