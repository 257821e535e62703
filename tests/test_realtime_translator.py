"""The Realtime translator alone, sans-I/O: no session, no server, no event loop.

Every frame the translator sends to a client is validated against the official openai SDK's
model of that event (``openai.types.realtime``), so a missing or mistyped field fails here.
"""

from __future__ import annotations

import base64
import itertools
import json

import attrs
import numpy as np
import pytest
import soxr
from openai.types.realtime import RealtimeResponseStatus

from realtime_harness import checked
from voiceorch import protocol as p
from voiceorch.realtime import RealtimeTranslator


class Link:
    """A translator between a fake client (dicts) and a fake session (v1 events)."""

    def __init__(self, **config) -> None:
        ids = itertools.count(1)
        self.translator = RealtimeTranslator(model="gpt-realtime", new_id=lambda prefix: f"{prefix}_{next(ids)}")
        session = p.SessionConfig(instructions="Be brief.", turn_detection=p.TurnDetection(**config))
        [self.created] = self.session(p.SessionCreated(session_id="sess_1", audio=p.AUDIO_FORMAT, session=session))

    def client(self, event: dict | str | bytes) -> tuple[list, list[dict]]:
        """What one client frame gives: (v1 frames for the session, decoded; answers to the client)."""
        frame = json.dumps(event) if isinstance(event, dict) else event
        translation = self.translator.from_client(frame)
        to_session = [m if isinstance(m, bytes) else p.parse_client_event(m) for m in translation.to_session]
        return to_session, [checked(f) for f in translation.to_client]

    def session(self, *messages: p.ServerEvent | bytes) -> list[dict]:
        frames = []
        for message in messages:
            v1 = message if isinstance(message, bytes) else p.encode(message)
            frames += [checked(f) for f in self.translator.from_session(v1)]
        return frames


def types(frames: list[dict]) -> list[str]:
    return [f["type"] for f in frames]


def pcm24(seconds: float, freq: float = 440.0) -> bytes:
    t = np.arange(int(24_000 * seconds)) / 24_000
    return (np.sin(2 * np.pi * freq * t) * 8000).astype("<i2").tobytes()


def append(pcm: bytes) -> dict:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}


def done(turn_id: str, status: str, text: str = "") -> p.ResponseDone:
    return p.ResponseDone(turn_id=turn_id, status=status, text=text, metrics=p.ResponseMetrics())


# --- the session ------------------------------------------------------------------------------


def test_session_created_shows_the_effective_session_in_the_ga_shape():
    link = Link()
    session = link.created["session"]
    assert link.created["event_id"].startswith("event_")
    assert (session["type"], session["id"], session["model"]) == ("realtime", "sess_1", "gpt-realtime")
    assert session["instructions"] == "Be brief."
    assert session["output_modalities"] == ["audio"]
    for side in ("input", "output"):
        assert session["audio"][side]["format"] == {"type": "audio/pcm", "rate": 24000}
    vad = session["audio"]["input"]["turn_detection"]
    assert vad == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
        "idle_timeout_ms": None,
    }


def test_session_update_maps_instructions_and_turn_detection_and_echoes_the_voice():
    link = Link()
    update = {
        "type": "session.update",
        "event_id": "client_1",
        "session": {
            "type": "realtime",
            "instructions": "Speak like a pirate.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad", "threshold": 0.7},
                },
                "output": {"voice": "marin"},
            },
        },
    }
    [v1], answers = link.client(update)
    assert answers == []
    assert v1.session.instructions == "Speak like a pirate."
    # An object replaces the whole setting: what it omits takes the defaults, as upstream.
    vad = v1.session.turn_detection
    assert (vad.type, vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms, vad.interrupt_response) == (
        "server_vad",
        0.7,
        300,
        500,
        True,
    )
    applied = v1.session.apply(p.SessionConfig(instructions="x"))
    [updated] = link.session(p.SessionUpdated(session=applied))
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Speak like a pirate."
    assert updated["session"]["audio"]["input"]["turn_detection"]["threshold"] == 0.7
    assert updated["session"]["audio"]["output"]["voice"] == "marin"


def test_turn_detection_null_is_push_to_talk():
    link = Link()
    [v1], _ = link.client(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
    )
    assert v1.session.turn_detection.type == "none"
    [updated] = link.session(p.SessionUpdated(session=v1.session.apply(p.SessionConfig(instructions="x"))))
    assert updated["session"]["audio"]["input"]["turn_detection"] is None


def test_semantic_vad_is_served_as_semantic_vad_and_echoed_with_its_eagerness():
    link = Link(silence_duration_ms=800)
    update = {"type": "semantic_vad", "eagerness": "high", "interrupt_response": False}
    [v1], answers = link.client({"type": "session.update", "session": {"audio": {"input": {"turn_detection": update}}}})
    assert answers == []
    vad = v1.session.turn_detection
    assert (vad.type, vad.eagerness, vad.silence_duration_ms, vad.interrupt_response) == (
        "semantic_vad",
        "high",
        500,
        False,
    )
    [updated] = link.session(p.SessionUpdated(session=v1.session.apply(p.SessionConfig(instructions="x"))))
    assert updated["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": False,
    }
    # Omitted, eagerness is "auto", as upstream; a bad one is refused by name.
    [v1], _ = link.client(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}}}
    )
    assert (v1.session.turn_detection.type, v1.session.turn_detection.eagerness) == ("semantic_vad", "auto")
    bad = {"type": "semantic_vad", "eagerness": "eager"}
    to_session, [error] = link.client(
        {"type": "session.update", "session": {"audio": {"input": {"turn_detection": bad}}}}
    )
    assert to_session == [] and error["error"]["code"] == "invalid_value"
    assert error["error"]["param"] == "session.audio.input.turn_detection.eagerness"


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        (
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}}},
            "unsupported_audio_format",
            "session.audio.input.format",
        ),
        (
            {"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}},
            "unsupported_audio_format",
            "session.audio.output.format",
        ),
        (
            {"audio": {"output": {"format": {"type": "audio/pcma"}}}},
            "unsupported_audio_format",
            "session.audio.output.format",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "create_response": False}}}},
            "unsupported",
            "session.audio.input.turn_detection.create_response",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}},
            "unsupported",
            "session.audio.input.turn_detection.idle_timeout_ms",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "create_response": False}}}},
            "unsupported",
            "session.audio.input.turn_detection.create_response",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}},
            "invalid_value",
            "session.audio.input.turn_detection",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": "500"}}}},
            "invalid_event",
            "session.audio.input.turn_detection.silence_duration_ms",
        ),
        ({"type": "transcription"}, "unsupported", "session.type"),
        ({"output_modalities": ["audio", "text"]}, "unsupported", "session.output_modalities"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "unsupported", "session.tools[0].type"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "invalid_value", "session.tools[0]"),
        ({"tool_choice": {"type": "function", "name": "nope"}}, "invalid_value", "session.tool_choice"),
        ({"input_audio_format": "pcm16"}, "invalid_event", "session.input_audio_format"),
        ({"instructions": 42}, "invalid_event", "session.instructions"),
    ],
)
def test_a_session_update_that_cannot_be_honoured_is_refused_whole(session, code, param):
    link = Link()
    to_session, [error] = link.client(
        {
            "type": "session.update",
            "event_id": "client_7",
            "session": {"instructions": "x", **session} if "instructions" not in session else session,
        }
    )
    assert to_session == []  # nothing of it applied, the instructions neither
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (code, param, "client_7")


# --- input audio ------------------------------------------------------------------------------


def test_appended_24khz_audio_reaches_the_session_as_16khz_frames():
    link = Link(type="none")
    pcm = pcm24(1.0)
    frames = []
    for offset in range(0, len(pcm), 4800):  # 100 ms appends
        to_session, answers = link.client(append(pcm[offset : offset + 4800]))
        assert answers == []  # an append is never answered
        frames += to_session
    to_session, _ = link.client({"type": "input_audio_buffer.commit"})
    *tail, commit = to_session
    frames += tail
    assert isinstance(commit, p.InputAudioCommit)
    assert all(isinstance(f, bytes) and 0 < len(f) <= 1280 and len(f) % 2 == 0 for f in frames)
    received = np.frombuffer(b"".join(frames), dtype="<i2")
    assert len(received) == 16_000  # the commit flushed what the resampler held
    expected = soxr.resample(np.frombuffer(pcm, dtype="<i2"), 24_000, 16_000)
    assert np.max(np.abs(received.astype(int) - expected.astype(int))) < 200  # same signal


@pytest.mark.parametrize(
    ("audio", "code"),
    [
        ("not base64!", "invalid_audio"),
        (base64.b64encode(b"\x00\x01\x02").decode(), "invalid_audio"),
        (12, "invalid_event"),
    ],
)
def test_bad_audio_in_an_append_is_an_error(audio, code):
    link = Link()
    to_session, [error] = link.client({"type": "input_audio_buffer.append", "audio": audio, "event_id": "a1"})
    assert to_session == []
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (code, "audio", "a1")


def test_committing_an_empty_buffer_without_vad_is_an_error_at_once():
    link = Link(type="none")
    to_session, [error] = link.client({"type": "input_audio_buffer.commit", "event_id": "c1"})
    assert to_session == []
    assert (error["error"]["code"], error["error"]["event_id"]) == ("input_audio_buffer_commit_empty", "c1")


def test_a_spoken_turn_under_server_vad_keeps_one_item_id_from_speech_start_to_transcript():
    link = Link()
    link.client(append(pcm24(2.0)))
    frames = link.session(
        p.SpeechStartedEvent(audio_ms=320.0),
        p.SpeechStoppedEvent(audio_ms=1504.0),
        p.InputAudioCommitted(turn_id="turn_1", audio_ms=1480.0),
        p.ResponseCreated(turn_id="turn_1"),
        p.TranscriptFinal(turn_id="turn_1", text="hello there"),
    )
    assert types(frames) == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "conversation.item.input_audio_transcription.completed",
    ]
    started, stopped, committed, added, item_done, created, transcribed = frames
    item_id = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == item_done["item"]["id"] == item_id
    assert transcribed["item_id"] == item_id
    assert (started["audio_start_ms"], stopped["audio_end_ms"]) == (320, 1504)
    assert added["item"]["role"] == "user" and added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    assert transcribed["transcript"] == "hello there"
    assert transcribed["usage"] == {"type": "duration", "seconds": 1.48}
    assert len({f["event_id"] for f in [link.created, *frames]}) == len(frames) + 1


def test_speech_dates_count_all_the_audio_of_the_session_across_a_clear():
    link = Link()
    link.client(append(pcm24(1.5)))  # 1500 ms
    link.client({"type": "input_audio_buffer.clear"})  # the session's detector counts from 0 again
    [started] = link.session(p.SpeechStartedEvent(audio_ms=96.0))
    assert started["audio_start_ms"] == 1500 + 96
    [cleared] = link.session(p.InputAudioCleared(audio_ms=500.0))
    assert cleared["type"] == "input_audio_buffer.cleared"


# --- typed turns and response.create --------------------------------------------------------


def test_a_user_text_item_is_held_until_response_create():
    link = Link()
    to_session, [added, item_done] = link.client(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is the capital of France?"}],
            },
        }
    )
    assert to_session == []
    assert (added["type"], item_done["type"]) == ("conversation.item.added", "conversation.item.done")
    assert added["item"]["content"] == [{"type": "input_text", "text": "What is the capital of France?"}]
    assert added["item"]["id"] == item_done["item"]["id"]
    [v1], answers = link.client({"type": "response.create"})
    assert answers == []
    assert v1 == p.InputText(text="What is the capital of France?")
    # Nothing new since: another response.create has nothing to answer.
    to_session, [error] = link.client({"type": "response.create", "event_id": "r2"})
    assert to_session == [] and (error["error"]["code"], error["error"]["event_id"]) == ("no_new_input", "r2")


def test_several_text_items_make_one_turn_and_keep_their_ids():
    link = Link()
    _, [first, _] = link.client(
        {
            "type": "conversation.item.create",
            "item": {
                "id": "item_mine",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Hello."}],
            },
        }
    )
    _, [second, _] = link.client(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Who are you?"}]},
        }
    )
    assert first["item"]["id"] == "item_mine" and second["previous_item_id"] == "item_mine"
    [v1], _ = link.client({"type": "response.create", "response": {"metadata": {"topic": "x"}}})
    assert v1 == p.InputText(text="Hello.\nWho are you?")


@pytest.mark.parametrize(
    ("item", "param"),
    [
        ({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "hi"}]}, "item.role"),
        (
            {"type": "message", "role": "assistant", "content": [{"type": "input_text", "text": "hi"}]},
            "item.content[0].type",
        ),
        ({"type": "message", "role": "system", "content": [{"type": "input_text", "text": " "}]}, "item.content"),
        ({"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}, "item.type"),
        (
            {"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAAA"}]},
            "item.content[0].type",
        ),
        ({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "  "}]}, "item.content"),
    ],
)
def test_items_voiceorch_cannot_add_are_refused(item, param):
    link = Link()
    to_session, [error] = link.client({"type": "conversation.item.create", "item": item})
    assert to_session == [] and error["error"]["param"] == param


def test_response_create_after_a_commit_claims_the_response_already_under_way():
    link = Link(type="none")
    link.client(append(pcm24(0.5)))
    to_session, _ = link.client({"type": "input_audio_buffer.commit"})
    assert isinstance(to_session[-1], p.InputAudioCommit)  # the session answers it at once
    to_session, answers = link.client({"type": "response.create"})
    assert to_session == [] and answers == []
    to_session, [error] = link.client({"type": "response.create"})
    assert error["error"]["code"] == "no_new_input"


def test_a_commit_the_session_refused_is_not_claimed_by_response_create():
    link = Link()  # server VAD: the session decides whether the buffer holds anything
    [commit], _ = link.client({"type": "input_audio_buffer.commit"})
    assert commit == p.InputAudioCommit()
    [error] = link.session(p.Error(code="input_audio_buffer_empty", message="there is no audio to commit"))
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    to_session, [error] = link.client({"type": "response.create"})
    assert to_session == [] and error["error"]["code"] == "no_new_input"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"conversation": "none"}, "response.conversation"),
        ({"input": []}, "response.input"),
        ({"instructions": "Shout."}, "response.instructions"),
        ({"output_modalities": ["text"]}, "response.output_modalities"),
        ({"tools": [{"type": "function", "name": "f"}]}, "response.tools"),
    ],
)
def test_response_create_options_voiceorch_cannot_honour_are_refused(params, param):
    link = Link()
    link.client(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        }
    )
    to_session, [error] = link.client({"type": "response.create", "response": params})
    assert to_session == [] and error["error"]["param"] == param


# --- responses --------------------------------------------------------------------------------


def reply_audio(ms: int) -> bytes:
    t = np.arange(16 * ms) / 16_000
    return (np.sin(2 * np.pi * 300 * t) * 5000).astype("<i2").tobytes()


def test_a_completed_response_in_the_upstream_event_order_with_consistent_ids():
    link = Link()
    frames = link.session(
        p.ResponseCreated(turn_id="turn_1"),
        p.TranscriptFinal(turn_id="turn_1", text="hi"),  # a typed turn: nothing to say
        p.ResponseTextDelta(turn_id="turn_1", delta="Sure"),
        p.ResponseTextDelta(turn_id="turn_1", delta=" thing."),
        *[reply_audio(40) for _ in range(25)],  # 1 s
        done("turn_1", "completed", "Sure thing."),
    )
    assert types(frames)[:6] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.delta",
    ]
    assert types(frames)[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    response_id = frames[0]["response"]["id"]
    assert frames[0]["response"]["status"] == "in_progress" and frames[0]["response"]["output"] == []
    item_id = frames[1]["item"]["id"]
    for frame in frames[1:-1]:
        if "response_id" in frame:
            assert frame["response_id"] == response_id
        assert frame.get("item_id", frame.get("item", {}).get("id")) == item_id
    audio = b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == "response.output_audio.delta")
    assert len(audio) == 2 * 24_000  # 1 s at 24 kHz: the end of the stream flushed the resampler
    final = frames[-1]["response"]
    assert (final["id"], final["status"], final["status_details"]) == (response_id, "completed", None)
    assert final["output"] == [
        {
            "id": item_id,
            "type": "message",
            "object": "realtime.item",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_audio", "transcript": "Sure thing."}],
        }
    ]
    assert final["voiceorch"]["heard_text"] == "Sure thing."
    transcript_done = frames[-5]
    assert transcript_done["transcript"] == "Sure thing."


@pytest.mark.parametrize(("status", "reason"), [("interrupted", "turn_detected"), ("cancelled", "client_cancelled")])
def test_a_cut_off_response_is_cancelled_with_the_upstream_reason(status, reason):
    link = Link()
    link.session(
        p.ResponseCreated(turn_id="turn_1"), p.ResponseTextDelta(turn_id="turn_1", delta="Sure thing."), reply_audio(40)
    )
    if status == "interrupted":
        link.session(p.ResponseInterrupted(turn_id="turn_1", played_ms=20.0, heard_text=""))
    frames = link.session(done("turn_1", status))
    assert "response.output_audio.delta" not in types(frames)  # no audio after the cut
    final = frames[-1]["response"]
    assert final["status"] == "cancelled"
    assert final["status_details"] == {"type": "cancelled", "reason": reason, "error": None}
    assert final["output"][0]["status"] == "incomplete"


def test_a_reply_cut_at_the_token_limit_is_incomplete_with_max_output_tokens():
    link = Link()
    link.session(p.ResponseCreated(turn_id="turn_1"), p.ResponseTextDelta(turn_id="turn_1", delta="Well, first"))
    frames = link.session(reply_audio(40), attrs.evolve(done("turn_1", "completed", "Well, first"), truncated=True))
    final = frames[-1]["response"]  # checked() has validated it against the SDK's ResponseDoneEvent
    assert final["status"] == "incomplete"
    assert final["status_details"] == {"type": "incomplete", "reason": "max_output_tokens", "error": None}
    status = RealtimeResponseStatus.model_validate(final["status_details"], strict=True)
    assert (status.type, status.reason) == ("incomplete", "max_output_tokens")
    assert final["output"][0]["status"] == "incomplete"
    assert final["output"][0]["content"][0]["transcript"] == "Well, first"
    assert final["voiceorch"]["status"] == "completed"  # its audio did play to the end
    audio = b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == "response.output_audio.delta")
    assert len(audio) == 2 * 24 * 40  # all of it: the end of the stream flushed the resampler


def test_a_cancel_wins_over_the_token_limit():
    link = Link()
    link.session(p.ResponseCreated(turn_id="turn_1"), p.ResponseTextDelta(turn_id="turn_1", delta="Well"))
    [*_, final] = link.session(attrs.evolve(done("turn_1", "cancelled"), truncated=True))
    assert final["response"]["status"] == "cancelled"
    assert final["response"]["status_details"]["reason"] == "client_cancelled"


def test_a_response_cancelled_before_any_output_has_no_item():
    link = Link()
    frames = link.session(p.ResponseCreated(turn_id="turn_1"), done("turn_1", "cancelled"))
    assert types(frames) == ["response.created", "response.done"]
    assert frames[-1]["response"]["output"] == []


def test_a_failed_turn_gives_an_error_and_a_failed_response():
    link = Link()
    link.session(p.InputAudioCommitted(turn_id="turn_1", audio_ms=500.0), p.ResponseCreated(turn_id="turn_1"))
    frames = link.session(
        p.Error(code="stt_failed", message="the model crashed", turn_id="turn_1"), done("turn_1", "failed")
    )
    assert types(frames) == ["conversation.item.input_audio_transcription.failed", "error", "response.done"]
    assert frames[1]["error"] == {
        "type": "server_error",
        "code": "stt_failed",
        "message": "the model crashed",
        "param": None,
        "event_id": None,
    }
    assert frames[2]["response"]["status"] == "failed"
    assert frames[2]["response"]["status_details"]["error"]["code"] == "stt_failed"


def test_errors_about_client_frames_get_the_upstream_codes():
    link = Link()
    [error] = link.session(p.Error(code="no_active_response", message="there is no response to cancel"))
    assert (error["error"]["type"], error["error"]["code"]) == ("invalid_request_error", "response_cancel_not_active")
    [error] = link.session(p.Error(code="input_audio_buffer_full", message="full"))
    assert error["error"]["code"] == "input_audio_buffer_full"


def test_response_cancel_goes_to_the_session_unless_it_names_another_response():
    link = Link()
    [created] = link.session(p.ResponseCreated(turn_id="turn_1"))
    to_session, [error] = link.client({"type": "response.cancel", "response_id": "resp_other"})
    assert to_session == [] and error["error"]["code"] == "response_cancel_not_active"
    [v1], answers = link.client({"type": "response.cancel", "response_id": created["response"]["id"]})
    assert v1 == p.ResponseCancel() and answers == []


# --- truncation -------------------------------------------------------------------------------


def played_response(link: Link, turn_id: str, audio_ms: int) -> str:
    frames = link.session(
        p.ResponseCreated(turn_id=turn_id),
        p.ResponseTextDelta(turn_id=turn_id, delta="Sure thing."),
        *[reply_audio(40) for _ in range(audio_ms // 40)],
    )
    return frames[1]["item"]["id"]


def test_truncate_reports_the_playback_position_to_the_session():
    link = Link()
    item_id = played_response(link, "turn_1", 1000)
    link.session(done("turn_1", "interrupted"))
    [v1], [truncated] = link.client(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 500}
    )
    assert v1 == p.PlaybackPosition(turn_id="turn_1", played_ms=500.0)
    assert truncated["type"] == "conversation.item.truncated"
    assert (truncated["item_id"], truncated["content_index"], truncated["audio_end_ms"]) == (item_id, 0, 500)


def test_truncate_works_on_the_response_still_playing():
    link = Link()
    item_id = played_response(link, "turn_1", 400)
    [v1], [truncated] = link.client(
        {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 300}
    )
    assert v1 == p.PlaybackPosition(turn_id="turn_1", played_ms=300.0)


@pytest.mark.parametrize(
    ("change", "code", "param"),
    [
        ({"audio_end_ms": 1200}, "invalid_value", "audio_end_ms"),  # only 1000 ms were sent
        ({"audio_end_ms": -1}, "invalid_value", "audio_end_ms"),
        ({"content_index": 1}, "invalid_value", "content_index"),
        ({"item_id": "item_nope"}, "invalid_item_id", "item_id"),
        ({"audio_end_ms": 10.5}, "invalid_event", "audio_end_ms"),
    ],
)
def test_a_truncate_beyond_the_audio_sent_or_of_no_such_item_is_an_error(change, code, param):
    link = Link()
    item_id = played_response(link, "turn_1", 1000)
    link.session(done("turn_1", "completed"))
    event = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 500}
    to_session, [error] = link.client({**event, **change, "event_id": "t1"})
    assert to_session == []
    assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (code, param, "t1")


def test_only_the_latest_assistant_item_can_be_truncated():
    link = Link()
    first = played_response(link, "turn_1", 400)
    link.session(done("turn_1", "completed"))
    played_response(link, "turn_2", 400)
    to_session, [error] = link.client(
        {"type": "conversation.item.truncate", "item_id": first, "content_index": 0, "audio_end_ms": 100}
    )
    assert to_session == [] and error["error"]["code"] == "unsupported"


# --- frames that are not events ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "invalid_json"),
        ("[1, 2]", "invalid_event"),
        ('{"type": 7}', "invalid_event"),
        ('{"type": "dance"}', "unknown_event_type"),
        ('{"type": "conversation.item.delete", "item_id": "x"}', "unsupported_event"),
        ('{"type": "output_audio_buffer.clear"}', "unsupported_event"),
        (b"\x00\x01", "invalid_event"),
    ],
)
def test_frames_that_are_not_supported_events_get_an_error(frame, code):
    link = Link()
    to_session, [error] = link.client(frame)
    assert to_session == [] and error["error"]["code"] == code


# --- function calling -------------------------------------------------------------------------

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def tool_link() -> Link:
    link = Link(type="none")
    [v1], _ = link.client({"type": "session.update", "session": {"tools": [WEATHER], "tool_choice": "required"}})
    assert v1.session.tools == (p.Tool(**{k: v for k, v in WEATHER.items() if k != "type"}),)
    assert v1.session.tool_choice == "required"
    config = p.SessionConfig(instructions="Be brief.", tools=v1.session.tools, tool_choice="required")
    [updated] = link.session(p.SessionUpdated(session=config))
    assert updated["session"]["tools"] == [WEATHER] and updated["session"]["tool_choice"] == "required"
    text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}
    link.client({"type": "conversation.item.create", "item": text})
    link.client({"type": "response.create"})
    return link


def call_step(link: Link) -> list[dict]:
    """The session's first step: words, then a call of get_weather."""
    return link.session(
        p.ResponseCreated(turn_id="turn_1"),
        p.TranscriptFinal(turn_id="turn_1", text="Weather in Paris?"),
        p.ResponseTextDelta(turn_id="turn_1", delta="Let me check."),
        b"\x00\x01" * 640,
        p.ResponseToolCallDelta(turn_id="turn_1", call_id="call_w", name="get_weather", delta='{"city": '),
        p.ResponseToolCallDelta(turn_id="turn_1", call_id="call_w", name="get_weather", delta='"Paris"}'),
        p.ResponseToolCall(turn_id="turn_1", call_id="call_w", name="get_weather", arguments='{"city": "Paris"}'),
    )


def test_a_function_call_ends_the_response_and_its_output_opens_the_next():
    link = tool_link()
    frames = call_step(link)
    # The call's item ends, then the words' item (they have played: v1 makes its calls only
    # then), then the response.
    assert types(frames)[-12:] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.output_audio.delta",  # (the end the resampler held)
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    added = [f for f in frames if f["type"] == "response.output_item.added"]
    assert [(f["output_index"], f["item"]["type"]) for f in added] == [(0, "message"), (1, "function_call")]
    call = added[1]["item"]
    assert (call["call_id"], call["name"], call["status"]) == ("call_w", "get_weather", "in_progress")
    deltas = [f for f in frames if f["type"] == "response.function_call_arguments.delta"]
    assert "".join(f["delta"] for f in deltas) == '{"city": "Paris"}'
    assert {(f["item_id"], f["output_index"], f["call_id"]) for f in deltas} == {(call["id"], 1, "call_w")}
    [arguments_done] = [f for f in frames if f["type"] == "response.function_call_arguments.done"]
    assert (arguments_done["name"], arguments_done["arguments"]) == ("get_weather", '{"city": "Paris"}')
    ended = frames[-1]
    assert ended["type"] == "response.done" and ended["response"]["status"] == "completed"
    message, function_call = ended["response"]["output"]
    assert message["content"][0]["transcript"] == "Let me check."
    assert function_call == {**call, "status": "completed", "arguments": '{"city": "Paris"}'}
    first_response = ended["response"]["id"]

    output = {"type": "function_call_output", "call_id": "call_w", "output": '{"sky": "clear"}'}
    to_session, answers = link.client({"type": "conversation.item.create", "item": output})
    assert to_session == [p.ToolCallOutput(call_id="call_w", output='{"sky": "clear"}')]
    assert types(answers) == ["conversation.item.added", "conversation.item.done"]
    assert answers[0]["item"]["type"] == "function_call_output" and answers[0]["previous_item_id"] == call["id"]
    to_session, answers = link.client({"type": "response.create"})
    assert to_session == [] and types(answers) == ["response.created"]
    second = answers[0]["response"]["id"]
    assert second != first_response
    frames = link.session(
        p.ResponseTextDelta(turn_id="turn_1", delta="It is sunny."), done("turn_1", "completed", "It is sunny.")
    )
    assert {f["response_id"] for f in frames if "response_id" in f} == {second}
    assert frames[-1]["response"]["id"] == second and frames[-1]["response"]["status"] == "completed"
    [message] = frames[-1]["response"]["output"]
    assert message["content"][0]["transcript"] == "It is sunny."


def test_the_continuation_may_begin_before_the_clients_response_create_which_then_claims_it():
    link = tool_link()
    call_step(link)
    output = {"type": "function_call_output", "call_id": "call_w", "output": "sunny"}
    link.client({"type": "conversation.item.create", "item": output})
    frames = link.session(p.ResponseTextDelta(turn_id="turn_1", delta="Sunny."), done("turn_1", "completed"))
    assert types(frames)[0] == "response.created" and types(frames)[-1] == "response.done"
    to_session, answers = link.client({"type": "response.create"})
    assert to_session == [] and answers == []  # claimed: no error, no second response


def test_response_create_before_the_outputs_is_refused():
    link = tool_link()
    call_step(link)
    to_session, [error] = link.client({"type": "response.create"})
    assert to_session == [] and error["error"]["code"] == "invalid_event"
    assert "function_call_output" in error["error"]["message"]


def test_a_call_cut_off_by_a_cancel_ends_incomplete():
    link = tool_link()
    frames = link.session(
        p.ResponseCreated(turn_id="turn_1"),
        p.ResponseToolCallDelta(turn_id="turn_1", call_id="call_w", name="get_weather", delta='{"ci'),
        done("turn_1", "cancelled"),
    )
    assert types(frames)[-4:] == [
        "response.function_call_arguments.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    response = frames[-1]["response"]
    assert response["status"] == "cancelled"
    [call] = response["output"]
    assert (call["type"], call["status"], call["arguments"]) == ("function_call", "incomplete", '{"ci')


def test_a_turn_that_fails_while_its_calls_await_outputs_opens_no_response():
    link = tool_link()
    call_step(link)
    frames = link.session(
        p.Error(code="tool_call_timeout", message="the client did not answer", turn_id="turn_1"),
        done("turn_1", "failed"),
    )
    assert types(frames) == ["error"] and frames[0]["error"]["code"] == "tool_call_timeout"
    # A late output still goes to the session (it records it as late); no response is waiting.
    output = {"type": "function_call_output", "call_id": "call_w", "output": "sunny"}
    to_session, _ = link.client({"type": "conversation.item.create", "item": output})
    assert to_session == [p.ToolCallOutput(call_id="call_w", output="sunny")]
    _, [error] = link.client({"type": "response.create"})
    assert error["error"]["code"] == "no_new_input"


def test_a_text_only_session_answers_with_output_text_events():
    link = Link(type="none")
    [v1], _ = link.client({"type": "session.update", "session": {"output_modalities": ["text"]}})
    assert v1.session.output_modalities == ("text",)
    config = p.SessionConfig(instructions="Be brief.", turn_detection=p.TurnDetection(type="none"))
    [updated] = link.session(p.SessionUpdated(session=attrs.evolve(config, output_modalities=("text",))))
    assert updated["session"]["output_modalities"] == ["text"]
    _, [error] = link.client({"type": "response.create", "response": {"output_modalities": ["audio"]}})
    assert (error["error"]["code"], error["error"]["param"]) == ("unsupported", "response.output_modalities")
    frames = link.session(
        p.ResponseCreated(turn_id="turn_1"),
        p.ResponseTextDelta(turn_id="turn_1", delta="Hello "),
        p.ResponseTextDelta(turn_id="turn_1", delta="there."),
        done("turn_1", "completed", "Hello there."),
    )
    assert types(frames) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    assert frames[0]["response"]["output_modalities"] == ["text"]
    assert frames[3]["part"] == {"type": "text", "text": ""}
    assert frames[6]["text"] == "Hello there." and frames[7]["part"] == {"type": "text", "text": "Hello there."}
    [message] = frames[-1]["response"]["output"]
    assert message["content"] == [{"type": "output_text", "text": "Hello there."}]


def test_assistant_and_system_messages_go_into_the_history_after_the_user_texts_held():
    link = Link(type="none")

    def create(role: str, kind: str, text: str) -> tuple[list, list[dict]]:
        item = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
        return link.client({"type": "conversation.item.create", "item": item})

    create("user", "input_text", "My name is Ada.")
    to_session, answers = create("assistant", "output_text", "Nice to meet you.")
    assert to_session == [
        p.HistoryAdd(role="user", text="My name is Ada."),
        p.HistoryAdd(role="assistant", text="Nice to meet you."),
    ]
    assert types(answers) == ["conversation.item.added", "conversation.item.done"]
    assert answers[1]["item"]["content"] == [{"type": "output_text", "text": "Nice to meet you."}]
    to_session, answers = create("system", "input_text", "Be brief.")
    assert to_session == [p.HistoryAdd(role="system", text="Be brief.")]
    assert answers[0]["item"]["role"] == "system"
    _, [error] = link.client({"type": "response.create"})  # the user text went into the history
    assert error["error"]["code"] == "no_new_input"
    create("user", "input_text", "What is my name?")
    [turn], _ = link.client({"type": "response.create"})
    assert turn == p.InputText(text="What is my name?")


def test_an_update_the_session_refuses_for_a_tool_name_leaves_the_echo_of_the_next_one():
    link = Link()
    link.client({"type": "session.update", "session": {"tools": [WEATHER], "audio": {"output": {"voice": "ash"}}}})
    link.client({"type": "session.update", "session": {"audio": {"output": {"voice": "coral"}}}})
    [error] = link.session(p.Error(code="tool_name_taken", message="the server has tools named ['get_weather']"))
    assert error["error"]["code"] == "tool_name_taken"
    [updated] = link.session(p.SessionUpdated(session=p.SessionConfig(instructions="Be brief.")))
    assert updated["session"]["audio"]["output"]["voice"] == "coral"
