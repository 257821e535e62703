"""``/v1/realtime`` driven by the official openai SDK's realtime client against a real
``voiceorch serve --fake-engines`` (real sockets, real server, real speech detection; canned
STT, LLM and TTS, so it runs in seconds). The same tests with the embedded models are in
test_realtime_sdk.py.
"""

from __future__ import annotations

import pytest
import websockets.exceptions

from real_server import start_server
from realtime_harness import Events, b64, deadline, sdk_client
from voiceorch.engines.fakes import fake_pcm

TOKEN = "realtime-test-token"
REPLY = "Sure thing. Here is a short answer. Anything else?"


@pytest.fixture(scope="module")
def server():
    running = start_server("--fake-engines", "--auth-token", TOKEN)
    yield running
    assert running.stop() == 0


def test_the_sdk_connects_with_its_api_key_as_the_token(server):
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 30):
        created = Events(connection).next()
    assert created.type == "session.created"
    assert created.session.type == "realtime" and created.session.model == "gpt-realtime"


def test_a_wrong_api_key_is_refused_with_401(server):
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        with sdk_client(server, "not-the-token").realtime.connect(model="gpt-realtime"):
            pass
    assert info.value.response.status_code == 401


def test_a_text_turn_through_the_sdk(server):
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}
        )
        added = events.until("conversation.item.added")
        connection.response.create()
        done = events.until("response.done")
    assert added.item.role == "user" and added.item.content[0].text == "Hello!"
    assert done.response.status == "completed"
    [item] = done.response.output
    assert item.content[0].transcript == REPLY
    assert len(events.audio(done.response.id)) == 2 * 24 * 2880  # the fake reply's 2880 ms at 24 kHz
    assert {e.item_id for e in events.of_type("response.output_audio.delta")} == {item.id}


def test_push_to_talk_audio_through_the_sdk(server):
    speech = fake_pcm("x" * 20, 60.0)  # 1.2 s of a tone at 16 kHz...
    pcm24 = speech + speech[: len(speech) // 2]  # ... as 24 kHz samples: 1.2 s
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        updated = events.until("session.updated")
        assert updated.session.audio.input.turn_detection is None
        for offset in range(0, len(pcm24), 4800):
            connection.input_audio_buffer.append(audio=b64(pcm24[offset : offset + 4800]))
        connection.input_audio_buffer.commit()
        connection.response.create()
        committed = events.until("input_audio_buffer.committed")
        transcribed = events.until("conversation.item.input_audio_transcription.completed")
        done = events.until("response.done")
    assert transcribed.item_id == committed.item_id
    assert transcribed.transcript == "hello there"  # the fake STT
    assert transcribed.usage.seconds == pytest.approx(1.2, abs=0.01)
    assert done.response.status == "completed"


def test_errors_come_as_realtime_error_events_and_the_session_goes_on(server):
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(
            session={"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcmu"}}}}, event_id="my_update"
        )
        error = events.until("error")
        assert (error.error.code, error.error.param, error.error.event_id) == (
            "unsupported_audio_format",
            "session.audio.input.format",
            "my_update",
        )
        connection.response.cancel()
        error = events.until("error")
        assert error.error.code == "response_cancel_not_active"
        connection.send({"type": "input_audio_buffer.append", "audio": "%%%"})
        assert events.until("error").error.code == "invalid_audio"
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Still there?"}]}
        )
        connection.response.create()
        done = events.until("response.done")
        assert done.response.status == "completed"
        # Truncating further than the audio sent is an error, as upstream.
        item_id = done.response.output[0].id
        connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=60_000)
        error = events.until("error")
        assert (error.error.code, error.error.param) == ("invalid_value", "audio_end_ms")
        connection.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=400)
        truncated = events.until("conversation.item.truncated")
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 400)
