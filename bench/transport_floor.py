"""The transport's own cost: what trio-websocket alone takes per real-time session, with nothing
of voiceorch in it. A floor under the concurrency bench's ``server cpu%``.

    .venv/bin/python -m bench.transport_floor                 # 50, 100 and 150 sessions
    .venv/bin/python -m bench.transport_floor --sessions 150 --seconds 20

For each N and each shape, two processes on this machine, as in the concurrency bench:

- a bare trio-websocket server (``serve_websocket``, wsproto underneath, as ``voiceorch serve``
  uses): each connection's handler reads every message and drops it. In the shape
  ``listen+speak`` it also sends a 1,280-byte frame (40 ms of 16 kHz s16le, the server's reply
  frame) every 40 ms, one timer per connection, as a reply playing all the time would. No session, no VAD, no turn, no
  log, no metrics;
- a client of N connections, each sending a 640-byte frame every 20 ms on a fixed schedule
  (``trio.sleep_until``), the microphones' phases spread over one frame, reading whatever comes
  back.

Both processes freeze their heap after start-up and the client does not collect garbage (what
``serve`` and the concurrency bench's client do). After the connections are up and a warm-up,
the CPU time each process used over ``--seconds`` is read from /proc; the table gives % of one
core in all and per session, and the client's send lag (how late frames left against their
schedule: a client that fell behind would understate the server's load).

The server's figure is a lower bound for ``voiceorch serve`` at the same N: one process runs its
Python on one core at a time, so a process whose transport alone takes most of a core cannot
carry the session's own work (speech detection, turn-taking, pacing) within a 50 ms p99.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from contextlib import suppress

import trio
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

from .servers import cpu_seconds

FRAME_BYTES = 640  # 20 ms of 16 kHz s16le: a microphone frame, as the bench's clients send
FRAME_S = 0.02
REPLY_FRAME_BYTES = 1280  # 40 ms: the server's reply frame (``audio_frame_ms``' default)
REPLY_FRAME_S = 0.04
SHAPES = ("listen", "listen+speak")
WARM_UP_S = 3.0


# --- the bare server (a child process) -----------------------------------------------------------


async def _serve(shape: str) -> None:
    frame = bytes(REPLY_FRAME_BYTES)

    async def handler(request) -> None:
        ws = await request.accept()

        async def speak() -> None:
            at = trio.current_time()
            with suppress(ConnectionClosed):
                while True:
                    await ws.send_message(frame)
                    at += REPLY_FRAME_S
                    await trio.sleep_until(at)

        async with trio.open_nursery() as nursery:
            if shape == "listen+speak":
                nursery.start_soon(speak)
            with suppress(ConnectionClosed):
                while True:
                    await ws.get_message()
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
        gc.collect()
        gc.freeze()
        print(f"ready {server.port}", flush=True)


# --- the client (a child process) ----------------------------------------------------------------


async def _clients(url: str, n: int, seconds: float) -> None:
    frame = bytes(FRAME_BYTES)
    lags: list[float] = []
    connected = 0
    all_connected = trio.Event()

    async def one(index: int) -> None:
        nonlocal connected
        async with open_websocket_url(url) as ws:

            async def read() -> None:
                with suppress(ConnectionClosed):
                    while True:
                        await ws.get_message()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                connected += 1
                if connected == n:
                    all_connected.set()
                await all_connected.wait()
                at = trio.current_time() + index * FRAME_S / n
                end = at + seconds
                while at < end:
                    await trio.sleep_until(at)
                    lags.append(trio.current_time() - at)
                    await ws.send_message(frame)
                    at += FRAME_S
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for index in range(n):
            nursery.start_soon(one, index)
        await all_connected.wait()
        gc.collect()
        gc.freeze()
        gc.disable()
        print("connected", flush=True)
    lags.sort()
    print(json.dumps({"send_lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1000, 2)}), flush=True)


# --- the measurement --------------------------------------------------------------------------


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.transport_floor", *args], stdout=subprocess.PIPE, text=True)


def measure(n: int, shape: str, seconds: float) -> dict:
    """One level: a fresh bare server and client; their CPU over ``seconds`` after the warm-up."""
    server = _child("--serve", shape)
    try:
        port = int(server.stdout.readline().split()[1])
        client = _child("--clients", f"ws://127.0.0.1:{port}/", str(n), str(WARM_UP_S + seconds + 2))
        try:
            assert client.stdout.readline().strip() == "connected"
            time.sleep(WARM_UP_S)
            before = cpu_seconds(server.pid), cpu_seconds(client.pid), time.monotonic()
            time.sleep(seconds)
            after = cpu_seconds(server.pid), cpu_seconds(client.pid), time.monotonic()
            report = json.loads(client.stdout.readline())
            client.wait(timeout=30)
        finally:
            client.kill()
    finally:
        server.terminate()
        server.wait(timeout=10)
    wall = after[2] - before[2]
    server_pct = (after[0] - before[0]) / wall * 100
    client_pct = (after[1] - before[1]) / wall * 100
    return {
        "sessions": n,
        "shape": shape,
        "server_cpu_percent": round(server_pct, 1),
        "server_cpu_percent_per_session": round(server_pct / n, 3),
        "client_cpu_percent": round(client_pct, 1),
        "client_cpu_percent_per_session": round(client_pct / n, 3),
        **report,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| sessions | shape | server % of a core | per session | client % of a core | per session "
        "| client send lag p99 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['sessions']} | {row['shape']} | {row['server_cpu_percent']} | "
            f"{row['server_cpu_percent_per_session']} | {row['client_cpu_percent']} | "
            f"{row['client_cpu_percent_per_session']} | {row['send_lag_p99_ms']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.transport_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="50,100,150", help="comma-separated N (default 50,100,150)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per level (default 10)")
    parser.add_argument("--out", help="also write the rows as JSON to this file")
    parser.add_argument("--serve", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs=3, metavar=("URL", "N", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve)
        return
    if args.clients:
        url, n, seconds = args.clients
        trio.run(_clients, url, int(n), float(seconds))
        return
    rows = []
    for n in (int(x) for x in args.sessions.split(",")):
        for shape in SHAPES:
            rows.append(measure(n, shape, args.seconds))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(table(rows))
    if args.out:
        with open(args.out, "w") as out:
            json.dump(rows, out, indent=2)


if __name__ == "__main__":
    main()
