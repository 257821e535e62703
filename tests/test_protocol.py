"""The sans-I/O protocol layer alone: no event loop, no sockets."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from voiceorch import protocol as p
from voiceorch.protocol.codec import MAX_JSON_DEPTH
from voiceorch.protocol.strict_json import json_depth
from voiceorch.realtime import codec as rt_codec

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


def _nested(depth: int, inner: str = '"type": "input_text", "text": "hi"') -> str:
    """A client frame whose ``x`` field nests ``depth - 1`` arrays: the frame is ``depth`` deep."""
    return "{" + inner + ', "x": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def _parsers():
    return [
        pytest.param(p.parse_client_event, p.ProtocolError, id="v1"),
        pytest.param(rt_codec.parse_client_event, rt_codec.RealtimeProtocolError, id="realtime"),
    ]


@pytest.mark.parametrize("parse, error", _parsers())
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100, 5000, 12_000])
def test_json_nested_past_the_limit_is_invalid_json_on_every_python(parse, error, depth):
    # Python 3.11's json raised RecursionError past ~1000 levels, 3.13's parses 5000: ours is a
    # bound of our own, checked before parsing, the same everywhere and in both dialects.
    for frame in (_nested(depth), "[" * depth + "]" * depth, "[" * depth, '{"a":' * depth):
        with pytest.raises(error) as info:
            parse(frame)
        assert info.value.code == "invalid_json"
        assert f"deeper than {MAX_JSON_DEPTH} levels" in info.value.message


@pytest.mark.parametrize("parse, error", _parsers())
def test_json_nested_up_to_the_limit_is_parsed(parse, error):
    if parse is p.parse_client_event:
        assert parse(_nested(MAX_JSON_DEPTH)) == p.InputText(text="hi")
    else:  # a valid Realtime event, as deep as allowed
        inner = '"type": "response.cancel"'
        assert parse(_nested(MAX_JSON_DEPTH, inner)).TYPE == "response.cancel"
    with pytest.raises(error) as info:
        parse("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert info.value.code == "invalid_event"  # parsed, and refused for what it is


@pytest.mark.parametrize("parse, error", _parsers())
def test_brackets_inside_strings_do_not_count_towards_the_depth(parse, error):
    text = "[{" * 100 + '\\"]}\\\\[' * 50  # brackets, escaped quotes and backslashes in a string
    if parse is p.parse_client_event:
        assert parse(json.dumps({"type": "input_text", "text": text, "x": [[[]]]})) == p.InputText(text=text)
    else:
        assert parse(json.dumps({"type": "response.cancel", "event_id": text, "x": [[[]]]})).event_id == text


def test_bytes_frames_get_the_same_depth_bound():
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_event(("[" * 40 + "]" * 40).encode("utf-16"))
    assert info.value.code == "invalid_json"
    assert "deeper than" in info.value.message
    assert p.parse_client_event(_nested(MAX_JSON_DEPTH).encode()) == p.InputText(text="hi")


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab,:\n\u00e9', max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text('[]{}"\\a', max_size=4), children, max_size=3)
    ),
    max_leaves=40,
)


@given(_json_values, st.booleans())
def test_the_depth_scan_agrees_with_the_parsed_value(value, ascii_only):
    assert json_depth(json.dumps(value, ensure_ascii=ascii_only)) == _depth(value)


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


@given(
    st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["type", "text", "session", "instructions", "x"]), children, max_size=4
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_any_frame_parses_or_raises_protocol_error(frame):
    try:
        event = p.parse_client_event(frame)
    except p.ProtocolError as exc:
        assert exc.code in {"invalid_json", "invalid_event", "unknown_event_type", "message_too_large"}
    else:
        assert p.parse_client_event(p.encode(event)) == event
