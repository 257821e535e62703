"""The LLM backend of a real ``voiceorch serve`` going away and coming back: the supervised
llama.cpp child dying (turns fail cleanly with ``llm_unavailable``, ``/readyz`` says so, the
child is restarted, the session goes on), and an external ``--llm-url`` that is down at
start-up."""

from __future__ import annotations

import json
import os
import signal

import httpx
import pytest
import trio
import trio_websocket

from fake_openai_server import FakeOpenAIServer
from real_server import start_server
from test_wyoming_engines import free_port

pytestmark = pytest.mark.models

TIMEOUT = 120


def _child_pids(server) -> list[int]:
    return [line["pid"] for line in server.log_lines() if line.get("event") == "llm.child.started"]


async def _typed_turn(ws, text: str) -> list[dict]:
    """Send a typed turn; returns its events up to and including ``response.done``."""
    await ws.send_message(json.dumps({"type": "input_text", "text": text}))
    events = []
    while True:
        message = await ws.get_message()
        if isinstance(message, str):
            events.append(json.loads(message))
            if events[-1]["type"] == "response.done":
                return events


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_a_killed_llm_child_fails_the_turn_cleanly_is_restarted_and_the_session_goes_on():
    server = start_server("--llm-max-tokens", "12")
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                trio_websocket.open_websocket_url(server.url) as ws,
                httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
            ):
                assert json.loads(await ws.get_message())["type"] == "session.created"
                await ws.send_message(
                    json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}})
                )
                first = (await _typed_turn(ws, "Say hello."))[-1]
                assert (await http.get("/readyz")).status_code == 200
                [first_pid] = _child_pids(server)

                os.kill(first_pid, signal.SIGKILL)
                while not _gone(first_pid):  # reaped by the supervisor
                    await trio.sleep(0.01)
                failed = await _typed_turn(ws, "Are you there?")  # the restart waits out a backoff
                down = await http.get("/readyz")

                while (await http.get("/readyz")).status_code != 200:
                    await trio.sleep(0.2)
                again = await _typed_turn(ws, "And now?")
        second_pid = _child_pids(server)[-1]
    finally:
        rc = server.stop()
    assert first["status"] == "completed"
    errors = [e for e in failed if e["type"] == "error"]
    assert [e["code"] for e in errors] == ["llm_unavailable"]
    assert failed[-1]["status"] == "failed" and errors[0]["turn_id"] == failed[-1]["turn_id"]
    assert down.status_code == 503 and "LLM" in down.json()["reason"]
    assert again[-1]["status"] == "completed"
    events = [line["event"] for line in server.log_lines()]
    assert "llm.child.exited" in events and "llm.child.restarted" in events
    assert second_pid != first_pid
    assert rc == 0 and _gone(second_pid)  # serve stopped the new child too


async def test_an_external_llm_down_at_start_up_is_waited_for():
    port = free_port()  # nothing listens there yet
    server = start_server("--llm-url", f"http://127.0.0.1:{port}/v1")
    try:
        with trio.fail_after(TIMEOUT):
            async with (
                trio_websocket.open_websocket_url(server.url) as ws,
                httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
                trio.open_nursery() as nursery,
            ):
                assert json.loads(await ws.get_message())["type"] == "session.created"
                down = await http.get("/readyz")
                failed = await _typed_turn(ws, "Hello?")
                llm = FakeOpenAIServer(port=port, deltas=["Hello ", "again."])
                await nursery.start(llm.serve)  # the LLM server comes up
                up = await http.get("/readyz")
                done = await _typed_turn(ws, "Hello now?")
                nursery.cancel_scope.cancel()
    finally:
        rc = server.stop()
    assert down.status_code == 503 and "cannot reach LLM server" in down.json()["reason"]
    assert [e["code"] for e in failed if e["type"] == "error"] == ["llm_unavailable"]
    assert up.status_code == 200
    assert (done[-1]["status"], done[-1]["text"]) == ("completed", "Hello again.")
    assert "llm.warm_up_failed" in [line["event"] for line in server.log_lines()]
    assert rc == 0
