"""Who may open a voice session, and how many at once.

Checked on the WebSocket upgrade request, before any session state exists: an Origin outside
the allowlist is refused with HTTP 403, a missing or wrong token with HTTP 401. The carriers'
own credentials, when configured, replace the token on their paths: ``/v1/twilio`` then needs
Twilio's ``X-Twilio-Signature`` (missing: 401, wrong: 403), ``/v1/telnyx`` the Call Control
``stream_auth_token`` (401). A connection beyond ``max_sessions`` is accepted and closed at once
with 1013 ("try again later"), so a load balancer or client can go elsewhere. Tokens are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import attrs

from ..telephony.signature import twilio_signature_valid


@attrs.frozen(kw_only=True)
class AccessPolicy:
    #: When set, a connection must present it: ``Authorization: Bearer <token>`` or, for
    #: browsers (which cannot set headers on a WebSocket), ``?token=<token>`` in the URL.
    token: str | None = attrs.field(default=None, repr=False)
    #: When not empty, a request carrying an ``Origin`` header (browsers do) must come from
    #: one of these origins, e.g. ``https://app.example.com``.
    allowed_origins: frozenset[str] = frozenset()
    max_sessions: int = 32
    #: When set, ``/v1/twilio`` requires Twilio's ``X-Twilio-Signature`` made with this auth
    #: token (in place of ``token``: Twilio says not to put a query string in a ``<Stream url>``).
    twilio_auth_token: str | None = attrs.field(default=None, repr=False)
    #: The public base URL Twilio connects to (``wss://voice.example.com``): the signature covers
    #: it and the path. Needed with ``twilio_auth_token`` (behind a TLS proxy, the server cannot
    #: know the scheme and host Twilio used).
    public_url: str | None = None
    #: When set, ``/v1/telnyx`` requires the Call Control ``stream_auth_token`` as
    #: ``Authorization: Bearer <token>`` or a bare ``Authorization: <token>`` (in place of ``token``).
    telnyx_stream_token: str | None = attrs.field(default=None, repr=False)
    #: The ``start`` custom parameters of a call (Vonage: headers) that may set the session's
    #: instructions, the first present wins; empty: a call never sets them.
    call_instruction_params: tuple[str, ...] = ()

    def refusal(self, path: str, headers: list[tuple[str, str]]) -> tuple[int, str] | None:
        """``(http_status, reason)`` if the upgrade request must be refused, else None. Not a
        checkpoint."""
        by_name: dict[str, str] = {}
        for name, value in headers:
            by_name.setdefault(name.lower(), value)
        origin = by_name.get("origin")
        if self.allowed_origins and origin is not None and origin not in self.allowed_origins:
            return 403, "this origin is not allowed"
        endpoint = urlsplit(path).path
        if endpoint == "/v1/twilio" and self.twilio_auth_token is not None:
            return self._twilio_refusal(path, by_name)
        if endpoint == "/v1/telnyx" and self.telnyx_stream_token is not None:
            authorization = by_name.get("authorization", "")
            raw = hmac.compare_digest(authorization.strip().encode(), self.telnyx_stream_token.encode())
            if not raw and not _presents(self.telnyx_stream_token, "", authorization):
                return 401, "a valid Telnyx stream_auth_token is required (Authorization: Bearer <token>)"
            return None
        if self.token is not None and not _presents(self.token, path, by_name.get("authorization", "")):
            return 401, "a valid token is required (Authorization: Bearer <token>, or ?token=)"
        return None

    def _twilio_refusal(self, path: str, by_name: dict[str, str]) -> tuple[int, str] | None:
        assert self.twilio_auth_token is not None
        signature = by_name.get("x-twilio-signature")
        if not signature:
            return 401, "X-Twilio-Signature is required"
        base = (self.public_url or "").rstrip("/")
        if not twilio_signature_valid(self.twilio_auth_token, base + path, signature):
            return 403, f"X-Twilio-Signature does not match {base + urlsplit(path).path} (see --public-url)"
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
    #: Called after every change of ``active`` (``serve --workers`` publishes it to the others).
    on_change: Callable[[], None] = lambda: None

    def try_enter(self) -> bool:
        if self.active >= self.max_sessions:
            return False
        self.active += 1
        self.on_change()
        return True

    def leave(self) -> None:
        self.active -= 1
        self.on_change()

    def is_full(self) -> bool:
        """No room for another session. Not a checkpoint."""
        return self.active >= self.max_sessions
