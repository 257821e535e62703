"""Event-loop lag: how late the Trio loop wakes a task that asked to sleep.

A loop blocked by a slow callback (or starved of CPU) delays every session's audio at once,
so the server watches it: :func:`watch_loop_lag` logs ``loop.lag`` (p50, p99, max in ms over
the last period) every ``report_every`` seconds. Runs until cancelled.
"""

from __future__ import annotations

import logging

import trio

from ..logs import log_event

log = logging.getLogger(__name__)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def watch_loop_lag(interval: float = 0.05, report_every: float = 5.0) -> None:
    samples: list[float] = []
    next_report = trio.current_time() + report_every
    while True:
        asked = trio.current_time() + interval
        await trio.sleep_until(asked)
        samples.append(max(0.0, trio.current_time() - asked) * 1000)
        if trio.current_time() >= next_report:
            samples.sort()
            log_event(
                log,
                "loop.lag",
                logging.DEBUG,
                p50_ms=round(_percentile(samples, 0.5), 2),
                p99_ms=round(_percentile(samples, 0.99), 2),
                max_ms=round(samples[-1], 2),
                samples=len(samples),
            )
            samples.clear()
            next_report += report_every
