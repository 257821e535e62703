"""The HTTP side: page, /config.json, /healthz, /readyz, /metrics, and its robustness.

Rules: loopback only with port 0, a ``fail_after`` bound on every test. Each test runs the real
server in-process (``run_server`` with fake engines), with the real voice WebSocket beside it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import re
import socket

import httpx
import trio
import trio_websocket

from voiceorch.server.app import RunningServer, ServerConfig, run_server
from voiceorch.server.http import PAGE_DIR

HOST = "127.0.0.1"
TIMEOUT = 30


@contextlib.asynccontextmanager
async def running_server(**options):
    async with trio.open_nursery() as nursery:
        config = ServerConfig(fake_engines=True, host=HOST, port=0, http_port=0, warm_up=False, **options)
        ports: RunningServer = await nursery.start(run_server, config)
        assert ports.http_port is not None
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{ports.http_port}", timeout=10) as client:
            yield ports, client
        nursery.cancel_scope.cancel()


async def one_text_turn(voice_port: int, text: str = "hi") -> dict:
    """Hold one session with one typed turn; returns its ``response.done`` event."""
    async with trio_websocket.open_websocket_url(f"ws://{HOST}:{voice_port}/v1/voice") as ws:
        created = json.loads(await ws.get_message())
        assert created["type"] == "session.created"
        await ws.send_message(json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}}))
        return await typed_turn(ws, text)


async def typed_turn(ws, text: str) -> dict:
    """Send one typed turn on an open session; returns its ``response.done`` event."""
    await ws.send_message(json.dumps({"type": "input_text", "text": text}))
    while True:
        message = await ws.get_message()
        if isinstance(message, str):
            event = json.loads(message)
            if event["type"] == "response.done":
                return event


def sample(metrics_text: str, name: str, labels: str = "") -> float | None:
    """The value of one sample in Prometheus text format (``labels`` as written, e.g.
    ``status="completed"``), or None if absent."""
    pattern = "^" + re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)$"
    match = re.search(pattern, metrics_text, re.MULTILINE)
    return None if match is None else float(match.group(1))


async def test_healthz_readyz_config_and_unknown_paths():
    with trio.fail_after(TIMEOUT):
        async with running_server() as (ports, client):
            health = await client.get("/healthz")
            assert health.status_code == 200 and health.text.strip() == "ok"
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["ready"] is True
            config = await client.get("/config.json")
            assert config.status_code == 200
            assert config.json() == {"voice_path": "/v1/voice", "voice_port": ports.voice_port}
            assert (await client.get("/no/such/thing")).status_code == 404
            assert (await client.get("/page/../http.py")).status_code == 404
            assert (await client.get("/page/%2e%2e%2fhttp.py")).status_code == 404
            assert (await client.post("/healthz")).status_code == 405


async def test_page_is_served_when_present():
    with trio.fail_after(TIMEOUT):
        async with running_server() as (ports, client):
            page = await client.get("/")
            if (PAGE_DIR / "index.html").is_file():
                assert page.status_code == 200
                assert page.headers["content-type"].startswith("text/html")
                assert page.content == (PAGE_DIR / "index.html").read_bytes()
            else:
                assert page.status_code == 404


async def test_readyz_reports_an_llm_that_does_not_answer():
    from voiceorch.engines.base import Engines
    from voiceorch.server.http import HttpApp

    class DownLLM:
        async def check_ready(self):
            return "connection refused"

    app = HttpApp(Engines(stt=None, llm=DownLLM(), tts=None, vad=None), voice_port=1)
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"ready": False, "reason": "connection refused"}


async def test_the_page_can_be_told_to_connect_through_a_proxy():
    with trio.fail_after(TIMEOUT):
        async with running_server(page_voice_url="/v1/voice") as (ports, client):
            config = (await client.get("/config.json")).json()
    assert config == {"voice_path": "/v1/voice", "voice_port": ports.voice_port, "voice_url": "/v1/voice"}


async def test_readyz_says_so_while_the_server_is_full():
    from voiceorch.server.access import AccessPolicy

    with trio.fail_after(TIMEOUT):
        async with running_server(access=AccessPolicy(max_sessions=1)) as (ports, client):
            url = f"ws://{HOST}:{ports.voice_port}/v1/voice"
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.get_message()  # session.created: the one place is taken
                full = await client.get("/readyz")
            while (again := await client.get("/readyz")).status_code != 200:
                await trio.sleep(0.01)  # until the server has seen the session go
    assert full.status_code == 503
    assert full.json() == {"ready": False, "reason": "full: 1 of 1 sessions"}
    assert again.json() == {"ready": True}


async def test_metrics_count_sessions_and_turns():
    with trio.fail_after(TIMEOUT):
        async with running_server() as (ports, client):
            before = await client.get("/metrics")
            assert before.status_code == 200
            assert before.headers["content-type"].startswith("text/plain")
            assert "voiceorch_sessions_total" in before.text
            completed_before = sample(before.text, "voiceorch_turns_total", 'status="completed"') or 0
            ttfb_before = sample(before.text, "voiceorch_ttfb_seconds_count") or 0
            sessions_before = sample(before.text, "voiceorch_sessions_total")

            done = await one_text_turn(ports.voice_port)
            assert done["status"] == "completed"

            text = (await client.get("/metrics")).text
            assert sample(text, "voiceorch_turns_total", 'status="completed"') >= completed_before + 1
            assert sample(text, "voiceorch_ttfb_seconds_count") >= ttfb_before + 1
            assert sample(text, "voiceorch_sessions_total") >= sessions_before + 1
            assert sample(text, "voiceorch_llm_deltas_total") > 0
            assert sample(text, "voiceorch_audio_out_seconds_total") > 0
            assert sample(text, "voiceorch_stage_seconds_count", 'stage="llm_ttft"') >= 1
            assert "voiceorch_sessions_active" in text


async def _raw(port: int, data: bytes, *, reset: bool = False) -> bytes:
    """Send ``data`` on a raw TCP connection; read what comes back (until EOF or a short pause);
    with ``reset``, abort the connection (RST) instead of closing it."""
    stream = await trio.open_tcp_stream(HOST, port)
    received = b""
    try:
        await stream.send_all(data)
        if reset:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(4096):
                received += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()
    return received


async def test_garbage_and_resets_do_not_hurt_the_servers():
    upgrade = (
        b"GET /v1/voice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with running_server() as (ports, client):
            # A voice session that is open while the HTTP port is attacked, and goes on after.
            async with trio_websocket.open_websocket_url(f"ws://{HOST}:{ports.voice_port}/v1/voice") as ws:
                assert json.loads(await ws.get_message())["type"] == "session.created"
                await ws.send_message(
                    json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}})
                )
                assert (await typed_turn(ws, "before"))["status"] == "completed"

                answer = await _raw(ports.http_port, upgrade + b"\x00\xff garbage \x81\x7f" * 50)
                assert not answer.startswith(b"HTTP/1.1 101")
                await _raw(ports.http_port, b"BLAH / / HTTP/9.9 nonsense\r\n\r\n")
                await _raw(ports.http_port, b"\x16\x03\x01\x02\x00garbage that looks like TLS\r\n\r\n")
                await _raw(ports.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Le", reset=True)
                async with trio.open_nursery() as nursery:  # several at once, all reset
                    for _ in range(5):
                        nursery.start_soon(lambda: _raw(ports.http_port, b"GET /metrics HTTP/1.1\r\n", reset=True))

                assert (await typed_turn(ws, "after"))["status"] == "completed"
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            done = await one_text_turn(ports.voice_port)
            assert done["status"] == "completed"


async def test_voice_port_survives_a_reset_during_the_handshake():
    upgrade = (
        b"GET /v1/voice HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT):
        async with running_server() as (ports, client):
            await _raw(ports.voice_port, upgrade + b"\x00\xff garbage", reset=True)
            await trio.sleep(0.2)
            done = await one_text_turn(ports.voice_port)
            assert done["status"] == "completed"


async def test_the_supervisor_restarts_a_failed_http_server_on_the_same_port(monkeypatch):
    from voiceorch.engines.base import Engines
    from voiceorch.engines.fakes import FakeLLM
    from voiceorch.server import http

    real_serve = http.serve_http
    attempts = []

    async def flaky_serve(app, *, host, port, task_status):
        attempts.append(port)
        if len(attempts) == 1:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: real_serve(app, host=host, port=port, task_status=task_status)
                )
                task_status.started(bound)
                await trio.sleep(0.1)
                raise RuntimeError("hypercorn blew up")
        await real_serve(app, host=host, port=port, task_status=task_status)

    monkeypatch.setattr(http, "serve_http", flaky_serve)
    app = http.HttpApp(Engines(stt=None, llm=FakeLLM(), tts=None, vad=None), voice_port=1)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: http.run_http_server(
                    app, host=HOST, port=0, restart_backoff=0.05, task_status=task_status
                )
            )
            while len(attempts) < 2:
                await trio.sleep(0.05)
            async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as client:
                for _ in range(100):  # the restarted server may take a moment to listen
                    try:
                        response = await client.get("/healthz")
                        break
                    except httpx.ConnectError:
                        await trio.sleep(0.05)
            assert response.status_code == 200
            assert attempts == [0, port]
            nursery.cancel_scope.cancel()


async def test_the_server_freezes_its_start_up_heap_while_it_runs():
    """Once ready, what start-up made is out of later garbage collections (``gc.freeze``) until
    the server stops; ``freeze_heap_when_ready=False`` (``serve --no-freeze-heap``) leaves the
    collector alone."""
    gc.unfreeze()
    try:
        async with running_server(freeze_heap_when_ready=False):
            assert gc.get_freeze_count() == 0
        async with running_server():
            assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
