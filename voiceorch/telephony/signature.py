"""Twilio's request signature (``X-Twilio-Signature``), sans-I/O.

Twilio signs each request with the account's auth token: HMAC-SHA1 over the full URL it
requested followed by the POST parameters sorted by name, each name then its value, in base64.
A Media Streams WebSocket upgrade is a GET: the URL alone (``wss://...`` with its query), as
the TwiML ``<Stream url>`` gave it. Behind a TLS proxy, check against the public URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The signature Twilio sends for a request to ``url`` with POST ``params``."""
    data = url + "".join(name + value for name, value in sorted((params or {}).items()))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def twilio_signature_valid(
    auth_token: str, url: str, signature: str | None, params: Mapping[str, str] | None = None
) -> bool:
    """Whether ``signature`` is Twilio's for this request (compared in constant time)."""
    if not signature:
        return False
    return hmac.compare_digest(twilio_signature(auth_token, url, params).encode(), signature.encode())
