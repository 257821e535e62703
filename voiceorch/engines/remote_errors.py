"""One place that turns a remote engine's failures into :class:`EngineError` codes, and
bounds what a remote engine may send back.

``kind`` is ``"stt"`` or ``"tts"``; the codes are ``{kind}_unavailable`` (cannot connect),
``{kind}_timeout`` (connected, but no whole answer within the call's timeout) and
``{kind}_failed`` (the server answered with an error, with something unusable, or with more
than the caps below allow).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx
import trio

from ..logs import log_event
from .base import EngineError
from .wyoming_client import WyomingClosed, WyomingProtocolError, WyomingServerError, WyomingUnreachable

log = logging.getLogger(__name__)

#: Longest transcript accepted from a remote STT server, in UTF-8 bytes (an utterance of a
#: minute is about 1 kB of text).
MAX_TRANSCRIPT_BYTES = 64 << 10
#: Longest reply body of an OpenAI-compatible transcription (JSON escapes may take 6 bytes
#: a character).
MAX_TRANSCRIPT_BODY_BYTES = 4 * MAX_TRANSCRIPT_BYTES
#: Longest audio accepted for one sentence from a remote TTS server, in seconds at the
#: server's own rate and channel count (the session's sentences are at most 160 characters,
#: about 12 s of speech).
MAX_SENTENCE_AUDIO_S = 60
#: Bytes read of an error reply's body, for the message (of which the first
#: :data:`ERROR_SNIPPET_CHARS` characters are kept).
ERROR_BODY_BYTES = 4096
ERROR_SNIPPET_CHARS = 200


@contextmanager
def remote_call(kind: str, where: str, timeout: float) -> Iterator[None]:
    """Run the block within ``timeout`` seconds and translate its failures.

    Cancellation from outside passes through untouched (the block's connections close as it
    unwinds); only this call's own deadline becomes ``{kind}_timeout``.
    """
    try:
        with trio.fail_after(timeout):
            yield
    except trio.TooSlowError:
        raise EngineError(f"{kind}_timeout", f"{where} did not answer within {timeout:g} s") from None
    except WyomingUnreachable as exc:
        raise EngineError(f"{kind}_unavailable", str(exc)) from exc
    except WyomingServerError as exc:
        raise EngineError(f"{kind}_failed", f"{where} reported an error: {exc}") from exc
    except (WyomingClosed, WyomingProtocolError) as exc:
        raise EngineError(f"{kind}_failed", f"{where}: {exc}") from exc
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise EngineError(f"{kind}_unavailable", f"cannot connect to {where} ({type(exc).__name__})") from exc
    except httpx.TimeoutException as exc:
        raise EngineError(f"{kind}_timeout", f"{where} timed out ({type(exc).__name__})") from exc
    except httpx.HTTPError as exc:
        raise EngineError(f"{kind}_failed", f"{where}: {type(exc).__name__}: {exc}") from exc


async def warm_up_or_warn(kind: str, where: str, warm_up: Callable[[], Awaitable[object]]) -> None:
    """Run ``warm_up``; if it fails, log a warning (``{kind}.warm_up_failed``) and return.

    A remote server may start after the orchestrator (or restart): ``serve`` comes up anyway,
    ``/readyz`` answers 503 while the server is unreachable, and turns fail with the engine's
    code until it is back.
    """
    try:
        await warm_up()
    except EngineError as exc:
        log_event(log, f"{kind}.warm_up_failed", logging.WARNING, server=where, code=exc.code, reason=exc.message)


def redact(text: str, secret: str | None, *, cut: bool = False) -> str:
    """``text`` with every occurrence of ``secret`` (an API key) replaced by ``***``; with
    ``cut`` (``text`` is the start of something longer), so is any beginning of ``secret``
    at its very end."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    if cut:
        for length in range(min(len(secret) - 1, len(text)), 0, -1):
            if text.endswith(secret[:length]):
                return text[:-length] + "***"
    return text


async def error_snippet(response: httpx.Response, secret: str | None = None) -> str:
    """The start of an error reply's body for a message: at most :data:`ERROR_BODY_BYTES`
    read (of a streamed response; the rest is left unread), ``secret`` redacted before
    cutting (so no prefix of it survives), white space made single spaces, at most
    :data:`ERROR_SNIPPET_CHARS` characters. ``"(no body)"`` if the body cannot be read."""
    try:
        raw = await read_at_most(response, ERROR_BODY_BYTES)
    except httpx.HTTPError:
        return "(no body)"
    text = redact(raw.decode("utf-8", errors="replace"), secret, cut=len(raw) == ERROR_BODY_BYTES)
    text = " ".join(text.split())
    return text[:ERROR_SNIPPET_CHARS] + ("..." if len(text) > ERROR_SNIPPET_CHARS else "")


async def read_at_most(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes (or fewer) of ``response``'s body; stops reading there."""
    if response.is_stream_consumed:  # read already (a response that was not streamed)
        return response.content[:limit]
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= limit:
            break
    return bytes(body[:limit])


async def read_capped(response: httpx.Response, limit: int, kind: str, where: str) -> bytes:
    """``response``'s whole (streamed) body, or ``{kind}_failed`` as soon as it is known to
    be longer than ``limit`` bytes (by its ``Content-Length``, or once that much has come);
    the rest is not read. Cancellable at every piece."""
    too_long = EngineError(f"{kind}_failed", f"{where} sent a reply over the {limit}-byte limit")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_long
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > limit:
            raise too_long
    return bytes(body)
