"""The real server with the three embedded models, over a real WebSocket on loopback."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm
from voiceorch.talk import TurnInput, run_turn

from conftest import DATA
from real_server import start_server

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def server():
    running = start_server()
    yield running
    assert running.stop() in (0, -15)


async def _connect(server):
    return trio_websocket.open_websocket_url(server.url)


async def _created(ws) -> p.SessionCreated:
    created = p.parse_server_event(await ws.get_message())
    assert isinstance(created, p.SessionCreated)
    assert created.audio == p.AUDIO_FORMAT
    return created


def _llm_messages(server, session_id: str, turn_id: str) -> list[dict]:
    for line in server.log_lines():
        if line.get("event") == "llm.request.messages" and (line.get("session_id"), line.get("turn_id")) == (
            session_id,
            turn_id,
        ):
            return line["messages"]
    raise AssertionError(f"no LLM request logged for {session_id}/{turn_id}")


async def test_a_spoken_two_turn_conversation(server):
    with trio.fail_after(120):
        async with await _connect(server) as ws:
            created = await _created(ws)
            first = await run_turn(ws, TurnInput(wav=DATA / "jfk_16k.wav"))
            second = await run_turn(ws, TurnInput(wav=DATA / "hotwords_16k.wav"))

    assert "ask not what your country can do for you" in first.transcript.lower()
    assert "folder" in second.transcript.lower()
    for report in (first, second):
        assert report.done.status == "completed", report.errors
        assert report.reply_text.strip()
        assert report.done.text  # what was spoken, kept in history
        # Reply audio: whole 16-bit samples, a plausible length, and not silence.
        assert len(report.audio) % 2 == 0
        assert report.done.metrics.audio_ms == pytest.approx(len(report.audio) / p.BYTES_PER_MS)
        assert report.done.metrics.audio_ms > 500
        samples = memoryview(bytes(report.audio)).cast("h")
        assert max(abs(s) for s in samples[:: 50]) > 1000
        m = report.done.metrics
        assert m.stt_ms > 0 and m.llm_ttft_ms > 0 and m.tts_first_audio_ms > 0
        assert 0 < m.ttfb_ms <= m.total_ms

    # The second turn's LLM request carried the first turn.
    messages = _llm_messages(server, created.session_id, second.turn_id)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == first.transcript
    assert messages[2]["content"] == first.done.text
    assert messages[3]["content"] == second.transcript


async def test_a_typed_turn(server):
    with trio.fail_after(60):
        async with await _connect(server) as ws:
            await _created(ws)
            report = await run_turn(ws, TurnInput(text="What is the capital of France?"))
    assert report.transcript == "What is the capital of France?"
    assert report.done.status == "completed"
    assert report.done.metrics.stt_ms is None
    assert report.reply_text.strip() and report.audio


async def test_cancel_mid_reply_then_the_next_turn_works(server):
    with trio.fail_after(90):
        async with await _connect(server) as ws:
            await _created(ws)
            await ws.send_message(p.encode(p.InputText(text="Tell me a long story about a dragon.")))
            log = []
            while True:  # cancel as soon as the first reply audio arrives
                message = await ws.get_message()
                log.append(message)
                if isinstance(message, bytes):
                    break
            await ws.send_message(p.encode(p.ResponseCancel()))
            while True:
                message = await ws.get_message()
                log.append(message)
                if isinstance(message, str) and p.parse_server_event(message).TYPE == "response.done":
                    done = p.parse_server_event(message)
                    break
            assert done.status == "cancelled"
            report = await run_turn(ws, TurnInput(text="Thanks. Say goodbye."))
            assert report.done.status == "completed"
            # Nothing of the cancelled response came after its response.done.
            assert report.turn_id != done.turn_id


async def test_bad_input_on_the_real_server_gets_errors_and_the_session_goes_on(server):
    with trio.fail_after(60):
        async with await _connect(server) as ws:
            await _created(ws)
            for frame, code in [
                (b"\x00\x01\x02", "invalid_audio_frame"),
                ("{oops", "invalid_json"),
                ('{"type": "dance"}', "unknown_event_type"),
                ('{"type": "input_audio.commit"}', "input_audio_buffer_empty"),
            ]:
                await ws.send_message(frame)
                error = p.parse_server_event(await ws.get_message())
                assert (error.TYPE, error.code) == ("error", code)
            pcm = read_as_wire_pcm(DATA / "hotwords_16k.wav")
            await ws.send_message(pcm)
            report = await run_turn(ws, TurnInput(text="Hello!"))
            assert report.done.status == "completed"


async def test_an_unknown_path_is_refused_with_404(server):
    base = server.url.rsplit("/v1/voice", 1)[0]
    with trio.fail_after(10):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(base + "/nope"):
                pass
    assert info.value.status_code == 404
