"""Whether the engines can serve: the engine half of ``/readyz``, and a worker's watch of it.

:func:`engine_problem` asks every engine's ``check_ready`` in turn, each within
:data:`READY_TIMEOUT_S` (the LLM client and remote STT/TTS ask their server; in-process models
and the fakes always can; the MCP tool servers, if any, must all be connected) and gives the
first reason one cannot serve, or None. :func:`watch_engines` asks it every
:data:`WATCH_INTERVAL_S` for a worker of ``serve --workers N``, so that a worker whose engines
cannot serve (its llama.cpp child down) stops taking connections from the shared socket while
another worker can.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ..engines.base import Engines
from ..logs import log_event

log = logging.getLogger(__name__)

#: How long one engine's check may take before it counts as not ready.
READY_TIMEOUT_S = 3.0
#: How often a worker asks its engines.
WATCH_INTERVAL_S = 2.0


async def engine_problem(engines: Engines) -> str | None:
    """Why the engines cannot serve now, or None. Cancellable; a check that raises or takes
    longer than :data:`READY_TIMEOUT_S` is a reason, never an error."""
    checked = [("LLM", engines.llm), ("STT", engines.stt), ("TTS", engines.tts)]
    if engines.tools is not None:
        checked.append(("tool servers", engines.tools))
    for name, engine in checked:
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                reason = await engine.check_ready()
        except trio.TooSlowError:
            reason = f"the {name} did not answer within {READY_TIMEOUT_S:g} s"
        except Exception as exc:  # a health check reports, it does not crash
            reason = f"the {name} check failed: {exc!r}"
        if reason is not None:
            return reason
    return None


async def watch_engines(
    engines: Engines, report: Callable[[str | None], None], interval_s: float = WATCH_INTERVAL_S
) -> None:
    """Every ``interval_s``, give ``report`` the engines' problem (None: they can serve), and log
    each change (``engines.unready``, ``engines.ready``). Runs until cancelled."""
    last: str | None = None
    while True:
        problem = await engine_problem(engines)
        if problem != last:
            if problem is None:
                log_event(log, "engines.ready")
            else:
                log_event(log, "engines.unready", logging.WARNING, reason=problem)
            last = problem
        report(problem)
        await trio.sleep(interval_s)
