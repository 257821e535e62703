"""The real server with the three embedded models, over a real WebSocket on loopback."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from conftest import DATA
from real_server import start_server
from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm
from voiceorch.talk import TurnInput, configure, run_turn, send_audio

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def server():
    running = start_server()
    yield running
    assert running.stop() == 0
    # The embedded LLM server went with it.
    assert not [line for line in running.log_lines() if line.get("level") == "error"]


async def _connect(server):
    return trio_websocket.open_websocket_url(server.url)


async def _created(ws, *, vad: bool = False) -> p.SessionCreated:
    """Wait for session.created; switch to push-to-talk unless ``vad``."""
    created = p.parse_server_event(await ws.get_message())
    assert isinstance(created, p.SessionCreated)
    assert created.audio == p.AUDIO_FORMAT
    assert created.session.turn_detection.type == "server_vad"  # the default
    if not vad:
        await configure(ws, vad=False)
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
        assert max(abs(s) for s in samples[::50]) > 1000
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
            await send_audio(ws, pcm, realtime=False)  # 20 ms frames (a frame holds at most 1 s)
            report = await run_turn(ws, TurnInput(text="Hello!"))
            assert report.done.status == "completed"


async def test_an_unknown_path_is_refused_with_404(server):
    base = server.url.rsplit("/v1/voice", 1)[0]
    with trio.fail_after(10):
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(base + "/nope"):
                pass
    assert info.value.status_code == 404


async def test_barge_in_with_the_real_models_stops_the_reply_and_answers_the_new_turn(server):
    question = read_as_wire_pcm(DATA / "hotwords_16k.wav")
    interruption = read_as_wire_pcm(DATA / "jfk_16k.wav")[: 16_000 * 2 * 23 // 10]  # "And so my fellow Americans"
    silence_20ms = bytes(640)
    speak_now = trio.Event()

    async def microphone(ws) -> None:
        """A live microphone: the question, silence, the interruption when told, silence."""
        await send_audio(ws, question, realtime=True)
        while not speak_now.is_set():
            await send_audio(ws, silence_20ms, realtime=True)
        await send_audio(ws, interruption, realtime=True)
        while True:
            await send_audio(ws, silence_20ms, realtime=True)

    log: list = []
    with trio.fail_after(120):
        async with await _connect(server) as ws:
            await _created(ws, vad=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(microphone, ws)
                done = []
                while len(done) < 2:
                    message = await ws.get_message()
                    event = message if isinstance(message, bytes) else p.parse_server_event(message)
                    log.append(event)
                    if isinstance(event, bytes) and not speak_now.is_set():
                        speak_now.set()  # the reply is arriving: talk over it
                    if isinstance(event, p.ResponseDone):
                        done.append(event)
                nursery.cancel_scope.cancel()

    first, second = done
    interrupted = next(e for e in log if isinstance(e, p.ResponseInterrupted))
    assert interrupted.turn_id == first.turn_id
    assert first.status == "interrupted" and first.text == interrupted.heard_text
    # Not one frame of the interrupted reply after response.interrupted.
    between = log[log.index(interrupted) : log.index(first)]
    assert not any(isinstance(e, bytes) for e in between)
    assert second.status == "completed"
    transcripts = [e.text.lower() for e in log if isinstance(e, p.TranscriptFinal)]
    assert "folder" in transcripts[0]
    assert "fellow americans" in transcripts[1]
    speech_started = [e for e in log if isinstance(e, p.SpeechStartedEvent)]
    assert len(speech_started) >= 2
