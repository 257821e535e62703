"""The shared restart loop and exception-group walker (voiceorch/supervise.py), under MockClock."""

from __future__ import annotations

import pytest
import trio

from voiceorch.supervise import Backoff, leaves, run_with_restarts


def test_backoff_doubles_to_its_maximum_and_resets_after_a_good_run() -> None:
    backoff = Backoff(0.5, 4.0, reset_after=60)
    assert [backoff.delay_after(1) for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay_after(61) == 0.5  # it served for a minute: start again from the bottom
    assert backoff.delay_after(1) == 1.0


async def test_run_with_restarts_restarts_after_each_delay_until_cancelled(autojump_clock) -> None:
    starts: list[float] = []
    exits: list[tuple[int, float]] = []

    async def run_once() -> int:
        starts.append(trio.current_time())
        await trio.sleep(1)
        return len(starts)

    with trio.move_on_after(12):
        await run_with_restarts(run_once, backoff=Backoff(1, 4), on_exit=lambda n, delay: exits.append((n, delay)))
    assert exits[:4] == [(1, 1), (2, 2), (3, 4), (4, 4)]
    assert [round(b - a, 6) for a, b in zip(starts, starts[1:])] == [2, 3, 5]


async def test_an_exception_from_the_service_ends_the_loop(autojump_clock) -> None:
    async def run_once() -> None:
        raise RuntimeError("broken install")

    with pytest.raises(RuntimeError, match="broken install"):
        await run_with_restarts(run_once, backoff=Backoff(1, 4), on_exit=lambda *_: None)


def test_leaves_walks_nested_groups_depth_first() -> None:
    a, b, c = ValueError("a"), KeyError("b"), RuntimeError("c")
    group = ExceptionGroup("outer", [ExceptionGroup("inner", [a, b]), c])
    assert list(leaves(group)) == [a, b, c]
    assert list(leaves(c)) == [c]
