"""One place that turns a remote engine's failures into :class:`EngineError` codes.

``kind`` is ``"stt"`` or ``"tts"``; the codes are ``{kind}_unavailable`` (cannot connect),
``{kind}_timeout`` (connected, but no whole answer within the call's timeout) and
``{kind}_failed`` (the server answered with an error, or with something unusable).
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
