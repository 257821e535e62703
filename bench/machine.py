"""What else the machine is doing: CPU used by processes that are not the bench's.

The bench shares its cores with whatever else runs (other test suites, other servers). From
``/proc/stat`` (all CPU time) minus the CPU time of the bench's own process tree (the bench,
the servers it started and their llama.cpp children) it computes the *foreign* CPU load, in
percent of one core, over any window. Each measurement records it, and before each one the
bench waits (bounded) for the machine to be quiet.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs
import trio

_TICK = os.sysconf("SC_CLK_TCK")


@attrs.frozen
class Snapshot:
    at: float
    busy: int  # all CPUs, ticks
    own: dict[int, int]  # pid -> ticks, the bench's process tree


def _busy_ticks() -> int:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime ticks) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def snapshot() -> Snapshot:
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    own, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        if pid in table:
            own[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return Snapshot(time.monotonic(), _busy_ticks(), own)


def foreign_cpu_percent(before: Snapshot, after: Snapshot) -> float | None:
    """CPU used by other processes between two snapshots, in percent of one core."""
    elapsed = after.at - before.at
    if elapsed <= 0:
        return None
    own = sum(after.own[pid] - before.own[pid] for pid in after.own if pid in before.own)
    foreign = max(0, (after.busy - before.busy) - own)
    return round(100 * foreign / _TICK / elapsed, 1)


async def wait_quiet(max_wait_s: float, threshold: float, interval: float = 1.0) -> dict:
    """Wait until the foreign load over ``interval`` is below ``threshold`` (percent of one
    core), for at most ``max_wait_s``. Returns how long it waited and the last load seen."""
    started = time.monotonic()
    load = None
    while True:
        before = snapshot()
        await trio.sleep(interval)
        load = foreign_cpu_percent(before, snapshot())
        waited = time.monotonic() - started
        if load is None or load < threshold or waited >= max_wait_s:
            return {
                "waited_s": round(waited, 1),
                "foreign_cpu_percent": load,
                "quiet": load is not None and load < threshold,
            }
