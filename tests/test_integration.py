"""The real server with the three embedded models, over a real WebSocket on loopback."""

from __future__ import annotations

import json

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


async def _talk_over_a_reply(server, overlap: bytes, *, then_text: str | None = None, responses: int = 1):
    """A typed question; once its reply's audio has played 0.5 s and its text has stopped coming
    for 0.7 s (the LLM is done: on a busy machine its generation would slow the transcription
    that decides), ``overlap`` from the live microphone (silence before and after it). Returns
    the session id and everything received, up to the ``response.done`` of the
    ``responses``-th response (and of the answer to ``then_text``, typed once the first
    response is done, if given)."""
    silence_20ms = bytes(640)
    speak_now = trio.Event()

    async def microphone(ws) -> None:
        while not speak_now.is_set():
            await send_audio(ws, silence_20ms, realtime=True)
        await send_audio(ws, overlap, realtime=True)
        while True:
            await send_audio(ws, silence_20ms, realtime=True)

    log: list = []
    with trio.fail_after(150):
        async with await _connect(server) as ws:
            created = await _created(ws, vad=True)
            assert created.session.turn_detection.interruption == "pause_and_decide"  # the default
            # The verdict is to come from the transcript, even on a slow machine (not the 4 s limit).
            update = {"type": "session.update", "session": {"turn_detection": {"interrupt_decision_ms": 10_000}}}
            await ws.send_message(json.dumps(update))
            assert isinstance(p.parse_server_event(await ws.get_message()), p.SessionUpdated)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(microphone, ws)
                question = {"type": "input_text", "text": "Tell me about the Moon in four sentences."}
                await ws.send_message(json.dumps(question))
                first_audio_at = None
                last_delta_at = trio.current_time()
                expected = responses
                while True:
                    message = await ws.get_message()
                    event = message if isinstance(message, bytes) else p.parse_server_event(message)
                    log.append(event)
                    now = trio.current_time()
                    if isinstance(event, p.ResponseTextDelta):
                        last_delta_at = now
                    if isinstance(event, bytes) and first_audio_at is None:
                        first_audio_at = now
                    if first_audio_at is not None and now - first_audio_at >= 0.5 and now - last_delta_at >= 0.7:
                        speak_now.set()
                    if isinstance(event, p.ResponseDone):
                        if event.turn_id == "turn_1" and then_text is not None:
                            await ws.send_message(json.dumps({"type": "input_text", "text": then_text}))
                            expected += 1
                        if len([e for e in log if isinstance(e, p.ResponseDone)]) >= expected:
                            break
                nursery.cancel_scope.cancel()
    return created.session_id, log


@pytest.mark.parametrize("overlap", ["hum_16k.wav", "mmhm_yeah_espeak_16k.wav"])
async def test_a_noise_or_a_backchannel_over_a_reply_pauses_and_resumes_it(server, overlap):
    session_id, log = await _talk_over_a_reply(
        server, read_as_wire_pcm(DATA / overlap), then_text="Thank you. Say it again in one sentence."
    )
    events = [e for e in log if not isinstance(e, bytes)]
    paused = next(e for e in events if isinstance(e, p.ResponsePaused))
    resumed = next(e for e in events if isinstance(e, p.ResponseResumed))
    first = next(e for e in events if isinstance(e, p.ResponseDone))
    assert paused.turn_id == resumed.turn_id == first.turn_id == "turn_1"
    assert resumed.overlap == ("noise" if overlap.startswith("hum") else "backchannel"), resumed
    assert resumed.resume_ms <= resumed.played_ms
    # No reply audio between the pause and the resume; the reply then played to its end.
    between = log[log.index(paused) : log.index(resumed)]
    assert not any(isinstance(e, bytes) for e in between)
    assert first.status == "completed"
    audio_after = sum(len(e) for e in log[log.index(resumed) : log.index(first)] if isinstance(e, bytes))
    assert audio_after > 0
    # The overlap was no turn: the only turns are the two typed ones.
    assert [e.turn_id for e in events if isinstance(e, p.ResponseCreated)] == ["turn_1", "turn_2"]
    assert not [e for e in events if isinstance(e, p.InputAudioCommitted)]
    # The next LLM request has the whole reply in its history.
    messages = _llm_messages(server, session_id, "turn_2")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"] == first.text
    deltas = "".join(e.delta for e in events if isinstance(e, p.ResponseTextDelta) and e.turn_id == "turn_1")
    assert " ".join(first.text.split()) == " ".join(deltas.split())


async def test_wait_stop_what_time_is_it_over_a_reply_interrupts_it_and_is_answered(server):
    _session_id, log = await _talk_over_a_reply(
        server, read_as_wire_pcm(DATA / "wait_stop_espeak_16k.wav"), responses=2
    )
    events = [e for e in log if not isinstance(e, bytes)]
    paused = next(e for e in events if isinstance(e, p.ResponsePaused))
    interrupted = next(e for e in events if isinstance(e, p.ResponseInterrupted))
    first, second = [e for e in events if isinstance(e, p.ResponseDone)]
    assert paused.turn_id == interrupted.turn_id == first.turn_id == "turn_1"
    assert not [e for e in events if isinstance(e, p.ResponseResumed)]
    assert first.status == "interrupted" and first.text == interrupted.heard_text
    assert not any(isinstance(e, bytes) for e in log[log.index(paused) : log.index(first)])
    # The words over the reply are the next turn, and it is answered.
    (transcript,) = [e for e in events if isinstance(e, p.TranscriptFinal) and e.turn_id == second.turn_id]
    assert "what time is it" in transcript.text.lower()
    assert second.status == "completed"
