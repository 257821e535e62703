"""Supervision helpers shared by the server's long-lived services (a bottom layer, like logs.py).

:func:`run_with_restarts` runs a service again whenever it ends, after a :class:`Backoff`; the
supervised llama.cpp child (engines/llama_server.py) and the HTTP server (server/http.py) use
it. :func:`leaves` walks an exception group down to its plain exceptions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import NoReturn, TypeVar

import attrs
import trio

T = TypeVar("T")


@attrs.define
class Backoff:
    """Delays between restarts: ``initial``, doubling up to ``maximum``; back to ``initial``
    once a run has lasted ``reset_after`` seconds (it was serving well, not crash-looping)."""

    initial: float
    maximum: float
    reset_after: float = 60.0
    _next: float | None = attrs.field(default=None, init=False)

    def delay_after(self, ran_s: float) -> float:
        """The delay before the next start, after a run that lasted ``ran_s`` seconds."""
        if self._next is None or ran_s > self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(delay * 2, self.maximum)
        return delay


async def run_with_restarts(
    run_once: Callable[[], Awaitable[T]], *, backoff: Backoff, on_exit: Callable[[T, float], None]
) -> NoReturn:
    """Run ``await run_once()`` again and again until cancelled.

    Each time it returns, ``on_exit(its_result, delay)`` is called (to log why it ended), then
    the next run starts after ``delay`` from ``backoff``. An exception from ``run_once`` ends the
    loop (catch what should be restarted inside it). Cancellation ends the current run or sleep.
    """
    while True:
        started = trio.current_time()
        outcome = await run_once()
        delay = backoff.delay_after(trio.current_time() - started)
        on_exit(outcome, delay)
        await trio.sleep(delay)


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The plain exceptions inside ``exc``, depth first (just ``exc`` if it is no group)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc
