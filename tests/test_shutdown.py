"""Graceful shutdown of a real ``voiceorch serve`` process (fake engines, real signals, real
sockets on loopback): SIGTERM stops accepting, lets the response in progress finish within the
grace period, closes every session with 1001 and exits 0."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
import trio
import trio_websocket

from real_server import start_server

TIMEOUT = 60


async def _start_reply(ws) -> None:
    """On a new session: push-to-talk, a typed turn, then wait for its first reply audio."""
    assert json.loads(await ws.get_message())["type"] == "session.created"
    await ws.send_message(json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}}))
    await ws.send_message(json.dumps({"type": "input_text", "text": "tell me something"}))
    while not isinstance(await ws.get_message(), bytes):
        pass  # until the first frame of reply audio


async def _events_until_closed(ws) -> tuple[list[dict], int | None, str | None]:
    events = []
    try:
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                events.append(json.loads(message))
    except trio_websocket.ConnectionClosed as closed:
        return events, closed.reason.code, closed.reason.reason


async def test_sigterm_lets_the_reply_finish_then_closes_every_session_with_1001_and_exits_0():
    server = start_server("--fake-engines", "--no-warm-up", "--shutdown-grace", "30")
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                trio_websocket.open_websocket_url(server.url) as busy,
                trio_websocket.open_websocket_url(server.url) as idle,
            ):
                await _start_reply(busy)
                assert json.loads(await idle.get_message())["type"] == "session.created"
                server.process.send_signal(signal.SIGTERM)
                async with httpx.AsyncClient(base_url=server.http_url, timeout=10) as http:
                    while (ready := await http.get("/readyz")).status_code == 200:
                        await trio.sleep(0.05)  # until the signal has been handled
                    assert ready.status_code == 503 and "shutting down" in ready.json()["reason"]
                    with pytest.raises((OSError, trio_websocket.HandshakeError)):
                        async with trio_websocket.open_websocket_url(server.url):
                            pass  # no new sessions: the listener is closed
                    # The idle session may not start a new response while draining.
                    await idle.send_message(json.dumps({"type": "input_text", "text": "me too"}))
                    results = {}

                    async def collect(name: str, ws) -> None:
                        results[name] = await _events_until_closed(ws)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(collect, "busy", busy)
                        nursery.start_soon(collect, "idle", idle)
                    busy_events, busy_code, busy_reason = results["busy"]
                    idle_events, idle_code, _ = results["idle"]
        rc = server.process.wait(timeout=TIMEOUT)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    done = [e for e in busy_events if e["type"] == "response.done"]
    assert [d["status"] for d in done] == ["completed"]  # the reply in progress played to its end
    assert (busy_code, busy_reason) == (1001, "server shutting down")
    assert idle_code == 1001
    assert [e["code"] for e in idle_events if e["type"] == "error"] == ["server_shutting_down"]
    assert not [e for e in idle_events if e["type"] == "response.created"]
    assert rc == 0
    events = [line["event"] for line in server.log_lines()]
    assert events.index("voice.draining") < events.index("voice.drained")


async def test_past_the_grace_period_the_reply_is_cut_off_and_the_session_closes_with_1001():
    server = start_server("--fake-engines", "--no-warm-up", "--shutdown-grace", "0.2")
    try:
        with trio.fail_after(TIMEOUT):
            async with trio_websocket.open_websocket_url(server.url) as ws:
                await _start_reply(ws)  # the fake reply plays for about 3 s
                server.process.send_signal(signal.SIGTERM)
                events, code, reason = await _events_until_closed(ws)
        rc = server.process.wait(timeout=TIMEOUT)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert not [e for e in events if e["type"] == "response.done"]
    assert (code, reason, rc) == (1001, "server shutting down", 0)
    drained = [line for line in server.log_lines() if line["event"] == "voice.drained"]
    assert drained and drained[0]["responses_cut_off"] is True
