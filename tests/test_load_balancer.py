"""Two ``voiceorch serve`` instances behind nginx (docs/deploy/nginx.conf, the file itself, with
its ports and paths replaced), sharing remote engines: wyoming-faster-whisper and wyoming-piper
with the embedded models, and one llama.cpp server. Loopback only; everything is started here.

Sessions are spread over both instances; stopping one (SIGTERM) closes only its sessions, with
1001; new sessions keep working through the balancer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import trio
import trio_websocket

from bench.engine_servers import EngineServers
from conftest import DATA
from real_server import RunningServer, start_server
from test_browser import CHROMIUM, browser_page, stats  # noqa: F401 (browser_page is a fixture)
from test_wyoming_engines import WyomingServers, free_port, read_wav

pytestmark = pytest.mark.models

NGINX_CONF = Path(__file__).parent.parent / "docs" / "deploy" / "nginx.conf"
TIMEOUT = 120


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        if os.environ.get("VOICEORCH_REQUIRE_NGINX"):
            pytest.fail("nginx is required here (Debian's nginx-light; ./run.sh test installs it where apt-get may)")
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    return found


_TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class Nginx:
    """docs/deploy/nginx.conf with the instances' ports, a free port to listen on, and its
    files in a temporary folder."""

    def __init__(self, voice_ports: list[int], http_ports: list[int]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="voiceorch-nginx-"))
        self.port = free_port()
        conf = NGINX_CONF.read_text()
        conf = conf.replace("/var/log/nginx/", f"{self.dir}/").replace("/run/", f"{self.dir}/")
        conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{self.port};")
        for documented, real in zip((8765, 8775, 8766, 8776), voice_ports + http_ports):
            conf, count = re.subn(rf"server 127\.0\.0\.1:{documented} ", f"server 127.0.0.1:{real} ", conf)
            assert count == 1, documented
        temp_paths = "".join(f"    {kind}_temp_path {self.dir}/{kind};\n" for kind in _TEMP_KINDS)
        conf = conf.replace("http {\n", "http {\n" + temp_paths, 1)
        (self.dir / "nginx.conf").write_text(conf)
        self.process = subprocess.Popen(
            [_nginx(), "-c", str(self.dir / "nginx.conf"), "-p", str(self.dir), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(self.dir / "stderr.log").open("w"),
        )
        self.url = f"ws://127.0.0.1:{self.port}/v1/voice"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def shared_llm():
    """One llama.cpp server for both instances (as an engine server, not a child of either)."""
    with EngineServers(stt=False, tts=False) as servers:
        yield servers.llm_url


@pytest.fixture(scope="module")
def wyoming_engines():
    servers = WyomingServers()
    yield servers
    servers.stop()


def _instance(name: str, engines: WyomingServers, llm_url: str, *options: str) -> RunningServer:
    return start_server(
        "--instance-id", name,
        "--stt-url", engines.stt_url, "--tts-url", engines.tts_url, "--llm-url", llm_url,
        "--llm-max-tokens", "16", "--shutdown-grace", "5", "--no-warm-up", *options,
    )  # fmt: skip


def _port(url: str) -> int:
    return int(re.search(r":(\d+)/", url).group(1))


async def _open(nursery: trio.Nursery, url: str) -> tuple[trio_websocket.WebSocketConnection, str]:
    ws = await trio_websocket.connect_websocket_url(nursery, url)
    created = json.loads(await ws.get_message())
    assert created["type"] == "session.created"
    await ws.send_message(json.dumps({"type": "session.update", "session": {"turn_detection": {"type": "none"}}}))
    return ws, created["session_id"]


async def _turn(ws, *, text: str | None = None, audio: bytes | None = None) -> list[dict]:
    if audio is not None:
        for offset in range(0, len(audio), 3200):
            await ws.send_message(audio[offset : offset + 3200])
        await ws.send_message(json.dumps({"type": "input_audio.commit"}))
    else:
        await ws.send_message(json.dumps({"type": "input_text", "text": text}))
    events = []
    while True:
        message = await ws.get_message()
        if isinstance(message, str):
            events.append(json.loads(message))
            if events[-1]["type"] == "response.done":
                return events


async def _closed(ws) -> tuple[int, str]:
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed as closed:
        return closed.reason.code, closed.reason.reason


def _served_by(instances: dict[str, RunningServer]) -> dict[str, str]:
    """session_id -> the instance whose log started it."""
    return {
        line["session_id"]: line["instance"]
        for running in instances.values()
        for line in running.log_lines()
        if line.get("event") == "session.start"
    }


async def test_sessions_spread_over_two_instances_and_survive_the_loss_of_one(wyoming_engines, shared_llm):
    instances = {name: _instance(name, wyoming_engines, shared_llm) for name in ("a", "b")}
    nginx = Nginx(
        [_port(instances[n].url) for n in ("a", "b")],
        [_port(instances[n].http_url + "/") for n in ("a", "b")],
    )
    speech = read_wav(DATA / "jfk_16k.wav")
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                opened = []
                for _ in range(4):
                    while True:  # nginx may still be starting
                        try:
                            opened.append(await _open(nursery, nginx.url))
                            break
                        except OSError:
                            await trio.sleep(0.1)
                served_by = _served_by(instances)
                by_instance = {name: [ws for ws, sid in opened if served_by[sid] == name] for name in instances}
                assert {name: len(found) for name, found in by_instance.items()} == {"a": 2, "b": 2}

                spoken = await _turn(by_instance["a"][0], audio=speech)
                typed = await _turn(by_instance["b"][0], text="Say hello.")

                instances["a"].process.send_signal(signal.SIGTERM)
                closes = [await _closed(ws) for ws in by_instance["a"]]
                after_loss = await _turn(by_instance["b"][1], text="Still there?")
                assert instances["a"].process.wait(timeout=30) == 0

                late = []
                for _ in range(2):
                    ws, session_id = await _open(nursery, nginx.url)
                    late.append((session_id, await _turn(ws, text="Hello?")))
                late_served_by = _served_by(instances)
                nursery.cancel_scope.cancel()
    finally:
        nginx.stop()
        for running in instances.values():
            running.stop()
    transcript = next(e for e in spoken if e["type"] == "transcript.final")["text"].lower()
    assert "ask not what your country can do for you" in transcript
    assert spoken[-1]["status"] == typed[-1]["status"] == "completed"
    assert closes == [(1001, "server shutting down")] * 2  # only a's sessions, cleanly
    assert after_loss[-1]["status"] == "completed"  # b's sessions went on
    assert [events[-1]["status"] for _, events in late] == ["completed", "completed"]
    assert [late_served_by[session_id] for session_id, _ in late] == ["b", "b"]


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("VOICEORCH_REQUIRE_BROWSER"),
    reason="Chromium is not installed at /usr/bin/chromium (apt-get install chromium)",
)
def test_the_browser_page_talks_through_the_balancer_on_one_port(wyoming_engines, shared_llm, browser_page):  # noqa: F811
    """The page and its voice WebSocket both come through nginx's one port (``--page-voice-url
    /v1/voice``): a push-to-talk turn from Chromium's fake microphone is heard and answered."""
    instances = {name: _instance(name, wyoming_engines, shared_llm, "--page-voice-url", "/v1/voice") for name in "ab"}
    nginx = Nginx(
        [_port(instances[n].url) for n in "ab"],
        [_port(instances[n].http_url + "/") for n in "ab"],
    )
    page = browser_page
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    try:
        for _ in range(100):  # until nginx listens
            try:
                page.goto(f"http://127.0.0.1:{nginx.port}/")
                break
            except Exception:
                trio.run(trio.sleep, 0.1)
        page.click("#talk")
        page.wait_for_function("window.voiceorchStats.framesSent >= 300", timeout=30_000)
        page.click("#talk")
        page.wait_for_function(
            "[...document.querySelectorAll('.bubble.you .text')].some(e => /folder/i.test(e.textContent))",
            timeout=60_000,
        )
        page.wait_for_function("window.voiceorchStats.turnsDone >= 1", timeout=60_000)
        played = stats(page)["samplesPlayed"]
    finally:
        nginx.stop()
        for running in instances.values():
            running.stop()
    assert played > 0
    assert sockets == [f"ws://127.0.0.1:{nginx.port}/v1/voice"]  # the voice went through nginx too
    access = (nginx.dir / "voiceorch-access.log").read_text()
    assert re.search(r'"GET /config.json HTTP/1.1" 200 ', access), access
