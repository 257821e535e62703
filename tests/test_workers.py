"""``serve --workers N``: real worker processes (fake engines, real Silero) sharing one voice port
on loopback, behind the parent's one HTTP port; real signals.

Each worker is given ``--max-sessions`` of its own, and a full worker leaves new connections to
the others, so opening sessions one after another until every worker is full puts sessions in
every worker: that shows the port shared without relying on how the kernel hands out
connections."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import trio
import trio_websocket
from prometheus_client.parser import text_string_to_metric_families

from real_server import start_server
from voiceorch.server.workers import merge_metrics

TIMEOUT = 60


def by_worker(metrics_text: str, name: str) -> dict[str, float]:
    """The samples called ``name`` by their ``worker`` label."""
    return {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    }


async def created(ws) -> str:
    event = json.loads(await ws.get_message())
    assert event["type"] == "session.created"
    return event["session_id"]


async def typed_turn(ws) -> dict:
    await ws.send_message(json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}}))
    await ws.send_message(json.dumps({"type": "input_text", "text": "hello"}))
    while True:
        message = await ws.get_message()
        if isinstance(message, str) and (event := json.loads(message))["type"] == "response.done":
            return event


async def test_workers_share_the_port_with_their_own_caps_and_readyz_and_metrics_cover_them_all():
    server = start_server("--fake-engines", "--no-warm-up", "--workers", "2", "--max-sessions", "2")
    try:
        with trio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
                ready = (await http.get("/readyz")).json()
                assert ready["ready"] is True and ready["workers"] == {"1": "ready", "2": "ready"}
                async with (
                    trio_websocket.open_websocket_url(server.url) as a,
                    trio_websocket.open_websocket_url(server.url) as b,
                    trio_websocket.open_websocket_url(server.url) as c,
                ):
                    sessions = [await created(ws) for ws in (a, b, c)]
                    # Three sessions, two per worker at most: both workers took some.
                    active = by_worker((await http.get("/metrics")).text, "voiceorch_sessions_active")
                    assert sorted(active.values()) == [1.0, 2.0]
                    ready = await http.get("/readyz")  # one worker is full, the other takes sessions
                    assert ready.status_code == 200
                    assert sorted(ready.json()["workers"].values()) == ["full: 2 of 2 sessions", "ready"]
                    async with trio_websocket.open_websocket_url(server.url) as d:
                        sessions.append(await created(d))
                        ready = await http.get("/readyz")
                        assert ready.status_code == 503
                        full = "full: 2 of 2 sessions"
                        assert ready.json()["reason"] == f"worker 1: {full}; worker 2: {full}"
                        async with trio_websocket.open_websocket_url(server.url) as e:  # every worker is full
                            with pytest.raises(trio_websocket.ConnectionClosed) as refused:
                                await e.get_message()
                            assert refused.value.reason.code == 1013
                        # Each session is served by one worker from start to end.
                        done = []

                        async def turn(ws) -> None:
                            done.append(await typed_turn(ws))

                        async with trio.open_nursery() as nursery:
                            for ws in (a, b, c, d):
                                nursery.start_soon(turn, ws)
                        assert [event["status"] for event in done] == ["completed"] * 4
                        metrics = (await http.get("/metrics")).text
                        assert by_worker(metrics, "voiceorch_sessions_active") == {"1": 2.0, "2": 2.0}
                        assert by_worker(metrics, "voiceorch_worker_up") == {"1": 1.0, "2": 1.0}
                        turns = [
                            s.value
                            for f in text_string_to_metric_families(metrics)
                            for s in f.samples
                            if s.name == "voiceorch_turns_total" and s.labels["status"] == "completed"
                        ]
                        assert sum(turns) == 4
                # Sessions gone: the workers take new ones again.
                while (await http.get("/readyz")).status_code != 200:
                    await trio.sleep(0.05)
    finally:
        rc = server.stop()
    assert rc == 0
    workers_of = {}
    for line in server.log_lines():
        if line.get("session_id") in sessions:
            workers_of.setdefault(line["session_id"], set()).add(line.get("worker"))
    assert sorted(workers_of) == sorted(sessions)
    assert all(len(found) == 1 for found in workers_of.values())  # never moved
    assert {w for found in workers_of.values() for w in found} == {1, 2}


async def _reply_then_close(ws, results: dict, name: str) -> None:
    events = []
    try:
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                events.append(json.loads(message))
    except trio_websocket.ConnectionClosed as closed:
        results[name] = (events, closed.reason.code)


async def test_sigterm_drains_every_worker_then_the_parent_exits_0():
    # One session per worker: with --max-sessions 1 the second session must go to the other worker.
    server = start_server("--fake-engines", "--no-warm-up", "--workers", "2", "--max-sessions", "1")
    pids = [line["pid"] for line in server.log_lines() if line.get("event") == "workers.started"]
    assert len(pids) == 2
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                trio_websocket.open_websocket_url(server.url) as a,
                trio_websocket.open_websocket_url(server.url) as b,
                httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
            ):
                for ws in (a, b):
                    await created(ws)
                    await ws.send_message(json.dumps({"type": "input_text", "text": "tell me something"}))
                for ws in (a, b):
                    while not isinstance(await ws.get_message(), bytes):
                        pass  # the reply has started playing
                server.process.send_signal(signal.SIGTERM)  # to the parent only
                while (ready := await http.get("/readyz")).status_code == 200:
                    await trio.sleep(0.05)
                assert ready.json()["reason"] == "shutting down: no new sessions"
                results: dict = {}
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_reply_then_close, a, results, "a")
                    nursery.start_soon(_reply_then_close, b, results, "b")
        rc = server.process.wait(timeout=TIMEOUT)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    for events, code in results.values():
        assert [e["status"] for e in events if e["type"] == "response.done"] == ["completed"]
        assert code == 1001
    assert rc == 0
    for pid in pids:  # the workers were reaped by the parent
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    drained = [line for line in server.log_lines() if line.get("event") == "voice.drained"]
    assert sorted(line["worker"] for line in drained) == [1, 2]
    assert not any(line["responses_cut_off"] for line in drained)


def test_merged_metrics_label_every_sample_with_its_worker():
    one = (
        "# HELP voiceorch_turns_total Responses.\n# TYPE voiceorch_turns_total counter\n"
        'voiceorch_turns_total{status="completed"} 3.0\n'
        "# HELP voiceorch_ttfb_seconds TTFB.\n# TYPE voiceorch_ttfb_seconds histogram\n"
        'voiceorch_ttfb_seconds_bucket{le="0.05"} 1.0\nvoiceorch_ttfb_seconds_bucket{le="+Inf"} 2.0\n'
        "voiceorch_ttfb_seconds_count 2.0\nvoiceorch_ttfb_seconds_sum 0.3\n"
    )
    two = one.replace("3.0", "4.0").replace("0.3", "0.5")
    merged = merge_metrics({1: one, 2: two}, workers=[1, 2, 3]).decode()
    assert by_worker(merged, "voiceorch_turns_total") == {"1": 3.0, "2": 4.0}
    assert by_worker(merged, "voiceorch_ttfb_seconds_sum") == {"1": 0.3, "2": 0.5}
    assert by_worker(merged, "voiceorch_worker_up") == {"1": 1.0, "2": 1.0, "3": 0.0}
    assert merged.count("# TYPE voiceorch_ttfb_seconds histogram") == 1


def _worker_pids(server) -> dict[int, list[int]]:
    """Each worker slot's processes so far, oldest first (from the parent's log)."""
    found: dict[int, list[int]] = {}
    for line in server.log_lines():
        if line.get("event") == "workers.started":
            found.setdefault(line["worker"], []).append(line["pid"])
    return found


async def test_a_worker_that_dies_is_started_again_and_the_other_keeps_its_session():
    server = start_server("--fake-engines", "--no-warm-up", "--workers", "2", "--max-sessions", "1")
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
                trio_websocket.open_websocket_url(server.url) as a,
                trio_websocket.open_websocket_url(server.url) as b,
            ):
                await created(a)
                await created(b)  # one session per worker
                first = _worker_pids(server)
                os.kill(first[1][0], signal.SIGKILL)
                lost = None
                for ws in (a, b):
                    try:
                        await typed_turn(ws)
                    except trio_websocket.ConnectionClosed:
                        lost = ws  # the killed worker's session
                assert lost is not None  # exactly one of the two was lost...
                kept = b if lost is a else a
                assert (await typed_turn(kept))["status"] == "completed"  # ...and the other goes on
                while len(_worker_pids(server).get(1, [])) < 2:
                    await trio.sleep(0.1)  # started again after its backoff
                while (ready := (await http.get("/readyz")).json())["workers"]["1"] != "ready":
                    await trio.sleep(0.1)  # serving again (worker 2 is full: it holds the session kept)
                assert ready["ready"] is True and ready["workers"]["2"] == "full: 1 of 1 sessions"
                async with trio_websocket.open_websocket_url(server.url) as c:  # the new worker takes it
                    await created(c)
                    assert (await typed_turn(c))["status"] == "completed"
                up = by_worker((await http.get("/metrics")).text, "voiceorch_worker_up")
                assert up == {"1": 1.0, "2": 1.0}
    finally:
        rc = server.stop()
    assert rc == 0
    restarted = [line for line in server.log_lines() if line.get("event") == "workers.exited"]
    assert [(line["worker"], line["code"]) for line in restarted] == [(1, -signal.SIGKILL)]


async def test_workers_drain_and_exit_when_the_parent_is_killed():
    server = start_server("--fake-engines", "--no-warm-up", "--workers", "2")
    pids = [pid for slot in _worker_pids(server).values() for pid in slot]
    assert len(pids) == 2
    server.process.kill()  # no clean-up of its own: the workers see their stdin close
    server.process.wait(timeout=TIMEOUT)
    with trio.fail_after(TIMEOUT):
        for pid in pids:
            while True:
                try:
                    os.kill(pid, 0)  # (the workers are reparented and reaped by init)
                except ProcessLookupError:
                    break
                await trio.sleep(0.1)
    stopped = [line for line in server.log_lines() if line.get("event") == "server.stop"]
    assert sorted((line["worker"], line["signal"]) for line in stopped) == [(1, "parent"), (2, "parent")]
