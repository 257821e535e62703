"""The sans-I/O protocol layer alone: no event loop, no sockets."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, strategies as st

from voiceorch import protocol as p

ALL_SERVER_EVENTS = [
    p.SessionCreated(session_id="s1", audio=p.AUDIO_FORMAT, session=p.SessionConfig(instructions="be brief")),
    p.SessionUpdated(session=p.SessionConfig(instructions="x")),
    p.InputAudioCommitted(turn_id="turn_1", audio_ms=1500.0),
    p.InputAudioCleared(audio_ms=20.0),
    p.ResponseCreated(turn_id="turn_1"),
    p.TranscriptFinal(turn_id="turn_1", text="hello"),
    p.ResponseTextDelta(turn_id="turn_1", delta=" hi"),
    p.ResponseDone(
        turn_id="turn_1", status="cancelled", text="Hi.", metrics=p.ResponseMetrics(stt_ms=12.5, ttfb_ms=300.0)
    ),
    p.Error(code="invalid_json", message="bad"),
    p.Error(code="llm_error", message="bad", turn_id="turn_2"),
]


@pytest.mark.parametrize("event", ALL_SERVER_EVENTS, ids=lambda e: e.TYPE)
def test_server_events_round_trip_with_their_wire_type_first(event):
    text = p.encode(event)
    data = json.loads(text)
    assert next(iter(data)) == "type" and data["type"] == event.TYPE
    assert p.parse_server_event(text) == event


def test_response_done_wire_shape():
    done = ALL_SERVER_EVENTS[7]
    assert json.loads(p.encode(done)) == {
        "type": "response.done",
        "turn_id": "turn_1",
        "status": "cancelled",
        "text": "Hi.",
        "metrics": {
            "stt_ms": 12.5,
            "llm_ttft_ms": None,
            "tts_first_audio_ms": None,
            "ttfb_ms": 300.0,
            "total_ms": None,
            "audio_ms": 0.0,
        },
    }


def test_response_done_carries_truncated_only_when_true():
    done = ALL_SERVER_EVENTS[7]
    assert "truncated" not in json.loads(p.encode(done))
    cut = attrs.evolve(done, truncated=True)
    assert json.loads(p.encode(cut))["truncated"] is True
    assert p.parse_server_event(p.encode(cut)) == cut
    with pytest.raises(p.ProtocolError, match="truncated"):
        p.parse_server_event(p.encode(done)[:-1] + ',"truncated":"yes"}')


@pytest.mark.parametrize(
    "frame, expected",
    [
        ('{"type": "input_audio.commit"}', p.InputAudioCommit()),
        ('{"type": "input_audio.clear"}', p.InputAudioClear()),
        ('{"type": "response.cancel"}', p.ResponseCancel()),
        ('{"type": "input_text", "text": "hi"}', p.InputText(text="hi")),
        ('{"type": "session.update", "session": {}}', p.SessionUpdate(session=p.SessionPatch())),
        (
            '{"type": "session.update", "session": {"instructions": "Be brief."}, "event_id": "e1"}',
            p.SessionUpdate(session=p.SessionPatch(instructions="Be brief.")),
        ),
    ],
)
def test_client_events_parse(frame, expected):
    assert p.parse_client_event(frame) == expected


@pytest.mark.parametrize(
    "frame, code, words",
    [
        ("{", "invalid_json", "not valid JSON"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
        ("42", "invalid_event", "JSON object"),
        ('{"text": "hi"}', "invalid_event", "'type'"),
        ('{"type": 7}', "invalid_event", "'type'"),
        ('{"type": "response.create"}', "unknown_event_type", "response.create"),
        ('{"type": "input_text", "text": null}', "invalid_event", "$.text"),
        ('{"type": "input_text", "text": 1}', "invalid_event", "$.text"),
        ('{"type": "session.update", "session": {"instructions": true}}', "invalid_event", "$.session.instructions"),
        ('{"type": "session.update", "session": "x"}', "invalid_event", "session"),
        ('{"type": "session.update"}', "invalid_event", "$.session"),
    ],
)
def test_bad_client_frames_raise_protocol_errors_with_a_code(frame, code, words):
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(frame)
    assert info.value.code == code
    assert words in info.value.message


def test_absurdly_nested_json_is_invalid_json_not_a_crash():
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event("[" * 5000 + "]" * 5000)
    assert info.value.code == "invalid_json"


def test_oversize_text_frames_are_refused_before_parsing():
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(" " * (p.MAX_TEXT_FRAME_BYTES + 1))
    assert info.value.code == "message_too_large"


def test_audio_frames_must_hold_whole_samples():
    p.check_audio_frame(b"\x00\x01" * 160)
    p.check_audio_frame(b"")
    with pytest.raises(p.ProtocolError) as info:
        p.check_audio_frame(b"\x00" * 641)
    assert info.value.code == "invalid_audio_frame" and "641" in info.value.message


def test_session_patch_keeps_omitted_fields():
    config = p.SessionConfig(instructions="old")
    assert p.SessionPatch().apply(config) == config
    assert p.SessionPatch(instructions="new").apply(config).instructions == "new"


def test_audio_ms():
    assert p.audio_ms(32_000) == 1000


@given(st.one_of(st.text(max_size=200), st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["type", "text", "session", "instructions", "x"]), children, max_size=4),
    max_leaves=12,
).map(json.dumps)))
def test_any_frame_parses_or_raises_protocol_error(frame):
    try:
        event = p.parse_client_event(frame)
    except p.ProtocolError as exc:
        assert exc.code in {"invalid_json", "invalid_event", "unknown_event_type", "message_too_large"}
    else:
        assert p.parse_client_event(p.encode(event)) == event
