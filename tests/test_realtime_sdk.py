"""``/v1/realtime`` proven with a client nobody here wrote: the official openai SDK's realtime
client (``client.realtime.connect``), against ``voiceorch serve`` with the three embedded
models, over a real WebSocket on loopback. The server requires a token; the SDK's api key is it.

Every event is validated against the SDK's own model of it (realtime_harness.Events).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import websockets.exceptions

from conftest import DATA
from real_server import start_server
from realtime_harness import Events, b64, deadline, sdk_client, wav_as_pcm24

pytestmark = pytest.mark.models

TOKEN = "realtime-models-token"
CHUNK = 4800  # 100 ms of 24 kHz PCM16


@pytest.fixture(scope="module")
def server():
    running = start_server("--auth-token", TOKEN)
    yield running
    assert running.stop() == 0
    assert not [line for line in running.log_lines() if line.get("level") == "error"]


def _connect(server):
    return sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime")


def _llm_requests(server, session_id: str) -> list[list[dict]]:
    return [
        line["messages"]
        for line in server.log_lines()
        if line.get("event") == "llm.request.messages" and line.get("session_id") == session_id
    ]


def _audible(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm, dtype="<i2")
    return len(samples) > 0 and int(np.max(np.abs(samples[::50]))) > 1000


def test_a_text_turn(server):
    with _connect(server) as connection, deadline(connection, 120):
        events = Events(connection)
        created = events.until("session.created")
        connection.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is the capital of France?"}],
            }
        )
        connection.response.create()
        done = events.until("response.done")
    assert created.session.audio.output.format.rate == 24000
    response = done.response
    assert response.status == "completed"
    [item] = response.output
    transcript = item.content[0].transcript
    assert transcript.strip()
    assert transcript == "".join(e.delta for e in events.of_type("response.output_audio_transcript.delta"))
    audio = events.audio(response.id)
    assert _audible(audio)
    # 24 kHz PCM16: the length of the audio the server measured at 16 kHz, within a frame.
    assert len(audio) / 48 == pytest.approx(response.voiceorch["metrics"]["audio_ms"], abs=40)
    for event in events.log:
        if hasattr(event, "response_id"):
            assert event.response_id == response.id
    assert {e.item_id for e in events.of_type("response.output_audio.delta")} == {item.id}
    assert [e.response.id for e in events.of_type("response.created")] == [response.id]


def test_an_audio_turn_from_a_recording(server):
    pcm = wav_as_pcm24(DATA / "jfk_16k.wav")
    with _connect(server) as connection, deadline(connection, 120):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        events.until("session.updated")
        for offset in range(0, len(pcm), CHUNK):
            connection.input_audio_buffer.append(audio=b64(pcm[offset : offset + CHUNK]))
        connection.input_audio_buffer.commit()
        connection.response.create()
        committed = events.until("input_audio_buffer.committed")
        transcribed = events.until("conversation.item.input_audio_transcription.completed")
        done = events.until("response.done")
    assert transcribed.item_id == committed.item_id
    assert "ask not what your country can do for you" in transcribed.transcript.lower()
    assert transcribed.usage.seconds == pytest.approx(len(pcm) / 48_000, abs=0.05)
    [user_item] = [e.item for e in events.of_type("conversation.item.added") if e.item.role == "user"]
    assert user_item.id == committed.item_id
    assert done.response.status == "completed"
    assert _audible(events.audio(done.response.id))
    assert len(events.of_type("response.created")) == 1  # response.create claimed the committed turn's


def test_barge_in_with_truncate_keeps_only_what_was_heard(server):
    question = "Tell me a long story about a dragon."
    interruption = wav_as_pcm24(DATA / "jfk_16k.wav")[: 24_000 * 2 * 23 // 10]  # "And so my fellow Americans"
    silence_20ms = bytes(960)
    speak, stop = threading.Event(), threading.Event()

    def microphone(connection) -> None:
        """A live microphone at real time: silence, the interruption when told, silence."""
        started = time.monotonic()
        sent = 0
        spoken = False
        while not stop.is_set():
            if speak.is_set() and not spoken:
                chunks = [interruption[o : o + 960] for o in range(0, len(interruption), 960)]
                spoken = True
            else:
                chunks = [silence_20ms]
            for chunk in chunks:
                try:
                    connection.input_audio_buffer.append(audio=b64(chunk))
                except websockets.exceptions.ConnectionClosed:
                    return  # the test is over (or failed): the connection is gone
                sent += 1
                time.sleep(max(0.0, started + sent * 0.02 - time.monotonic()))

    with _connect(server) as connection, deadline(connection, 180):
        events = Events(connection)
        created = events.until("session.created")
        assert created.session.audio.input.turn_detection.type == "server_vad"
        mic = threading.Thread(target=microphone, args=(connection,), daemon=True)
        mic.start()
        try:
            connection.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": question}]}
            )
            connection.response.create()
            first = events.until("response.created").response
            while len(events.audio(first.id)) < 2500 * 48:  # 2.5 s of the story has arrived
                event = events.next()
                assert event.type != "response.done", "the story ended before the interruption"
            assistant_item = events.of_type("response.output_item.added")[0].item.id
            speak.set()
            started = events.until("input_audio_buffer.speech_started")
            cut = events.until("response.done")
            # The client stopped playback at speech_started; now it says how much it had played.
            # (Sent after the cut, so that response.done shows the server's own estimate: a
            # truncate racing the cut is tested under MockClock in test_realtime_session.py.)
            connection.conversation.item.truncate(item_id=assistant_item, content_index=0, audio_end_ms=1000)
            truncated = events.until("conversation.item.truncated")
            transcribed = events.until("conversation.item.input_audio_transcription.completed")
            second = events.until("response.done")
        finally:
            stop.set()
            mic.join(timeout=5)

    assert cut.response.id == first.id
    assert (cut.response.status, cut.response.status_details.reason) == ("cancelled", "turn_detected")
    assert events.log.index(started) < events.log.index(cut)
    assert (truncated.item_id, truncated.audio_end_ms) == (assistant_item, 1000)
    assert "fellow americans" in transcribed.transcript.lower()
    assert second.response.status == "completed"
    assert transcribed.item_id == started.item_id

    # The request that answered the interruption: the story as far as the user heard it (1 s),
    # not as far as the server's estimate had it when the speech began (2.5 s had arrived).
    estimate = cut.response.voiceorch["heard_text"].split()
    messages = _llm_requests(server, created.session.id)[-1]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[1]["content"] == question
    heard = messages[2]["content"].split()
    assert 0 < len(heard) < len(estimate)
    assert heard == estimate[: len(heard)]
    assert "fellow americans" in messages[3]["content"].lower()


def test_an_unsupported_request_is_an_error_and_the_session_goes_on(server):
    with _connect(server) as connection, deadline(connection, 120):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(
            session={"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            event_id="evt_format",
        )
        error = events.until("error")
        connection.input_audio_buffer.commit(event_id="evt_commit")  # nothing appended: an empty commit
        empty = events.until("error")
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hello."}]}
        )
        connection.response.create()
        done = events.until("response.done")
    assert (error.error.type, error.error.code, error.error.event_id) == (
        "invalid_request_error",
        "unsupported_audio_format",
        "evt_format",
    )
    assert error.error.param == "session.audio.output.format"
    assert empty.error.code == "input_audio_buffer_commit_empty"
    assert events.of_type("session.updated") == []  # nothing of the refused update was applied
    assert done.response.status == "completed"
