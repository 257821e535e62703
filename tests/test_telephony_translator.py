"""The carriers' translators without sockets: every frame kind, bad frames (logged, never
answered), Telnyx reordering, marks and clear, DTMF batching, and the G.711 codecs against
known values."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import soxr

from voiceorch import protocol as p
from voiceorch.telephony import (
    CallAudio,
    CallFormat,
    TelnyxTranslator,
    TwilioTranslator,
    VonageTranslator,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)

SID = "MZ18ad3ab5a668481ce02b83e7395059f0"


def test_g711_known_values():
    assert ulaw_decode(bytes([0x00, 0x80, 0xFF, 0x7F, 0xFE, 0x7E])).tolist() == [-32124, 32124, 0, 0, 8, -8]
    assert alaw_decode(bytes([0xD5, 0x55, 0xAA, 0x2A])).tolist() == [8, -8, 32256, -32256]
    assert ulaw_encode(np.array([0, -1, 32767, -32768])) == bytes([0xFF, 0x7E, 0x80, 0x00])
    assert alaw_encode(np.array([0, -1, 32767, -32768])) == bytes([0xD5, 0x55, 0xAA, 0x2A])


def test_g711_round_trip_is_exact_on_codes_and_close_on_samples():
    codes = bytes(range(256))
    assert ulaw_encode(ulaw_decode(codes)) == codes.replace(b"\x7f", b"\xff")  # -0 is +0
    assert alaw_encode(alaw_decode(codes)) == codes
    samples = np.arange(-32768, 32768, 7, dtype=np.int16)
    error = np.abs(ulaw_decode(ulaw_encode(samples)).astype(int) - samples)
    assert (error <= np.maximum(16, np.abs(samples.astype(int)) // 16)).all()


def test_g711_matches_audioop():
    import audioop  # the stdlib's up to 3.12; audioop-lts (the test extras) from 3.13

    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert alaw_encode(pcm) == audioop.lin2alaw(pcm.tobytes(), 2)
    assert ulaw_decode(bytes(range(256))).tobytes() == audioop.ulaw2lin(bytes(range(256)), 2)


def twilio(event: str, seq: int = 1, **fields) -> str:
    return json.dumps({"event": event, "sequenceNumber": str(seq), "streamSid": SID, **fields})


def twilio_start(params: dict | None = None) -> str:
    start = {
        "accountSid": "AC0",
        "streamSid": SID,
        "callSid": "CA0",
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": params or {},
    }
    return twilio("start", 1, start=start)


def media(payload: bytes, seq: int, chunk: int | None = None) -> dict:
    payload_b64 = base64.b64encode(payload).decode()
    return {"track": "inbound", "chunk": str(chunk or seq - 1), "timestamp": str(20 * seq), "payload": payload_b64}


def started_twilio(**kwargs) -> TwilioTranslator:
    t = TwilioTranslator(**kwargs)
    assert not t.from_carrier(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}), 0).errors
    out = t.from_carrier(twilio_start(), 0)
    assert not out.errors and ("call.start", {"call_id": "CA0", "encoding": "mulaw", "rate": 8000}) in out.notes
    return t


def v1(event) -> str:
    return p.encode(event)


def done(status: str, turn_id: str = "turn_1") -> str:
    return v1(p.ResponseDone(turn_id=turn_id, status=status, text="", metrics=p.ResponseMetrics()))


def test_twilio_media_becomes_16_khz_frames():
    t = started_twilio()
    total = 0
    for seq in range(2, 52):  # one second of 20 ms frames, numbers as strings
        out = t.from_carrier(twilio("media", seq, media=media(ulaw_encode(np.full(160, 3000)), seq)), seq * 0.02)
        assert not out.errors and not out.to_carrier
        assert all(isinstance(f, bytes) and len(f) <= 40 * 32 for f in out.to_session)
        # Every frame reaches the session at once, less the 6 ms the resampler holds back.
        total += sum(len(f) for f in out.to_session)
        assert total == (seq - 1) * 640 - 2 * 2 * 48
    assert total == 32_000 - 192  # 1 s at 16 kHz s16le, less 6 ms


def test_caller_audio_is_resampled_as_soxr_resamples_the_whole_signal():
    """The windowed resampler of caller audio (soxr one-shot over a sliding window, for its low
    latency) gives what soxr gives the whole signal at once, to far below G.711's own noise."""
    rng = np.random.default_rng(0)
    t = np.arange(8000 * 3) / 8000
    noise = soxr.resample(rng.normal(0, 3000, t.size).astype(np.float32), 8000, 4000)  # speech-like band
    signal = (soxr.resample(noise, 4000, 8000)[: t.size] + 3000 * np.sin(2 * np.pi * 3300 * t)).astype(np.int16)
    audio = CallAudio(CallFormat("l16le", 8000))
    chunks = [audio.to_v1(signal[i : i + 160].astype("<i2").tobytes()) for i in range(0, signal.size, 160)]
    ours = np.frombuffer(b"".join(chunks), dtype="<i2").astype(float)
    whole = soxr.resample(signal, 8000, 16000, quality="HQ").astype(float)[: ours.size]
    error_db = 10 * np.log10(np.mean((ours - whole)[200:] ** 2) / np.mean(whole[200:] ** 2))
    assert error_db < -55, error_db


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_json"),
        (b"\x00\x01", "invalid_frame"),
        (json.dumps({"event": "dance", "streamSid": SID}), "unknown_event"),
        (twilio("media", 2, media={"payload": "***"}), "invalid_audio"),
        (json.dumps({"event": "media", "streamSid": "MZother", "media": {"payload": ""}}), "wrong_stream"),
        (twilio("media", 2, media={}), "missing_field"),
        (twilio("dtmf", 2, dtmf={"digit": "55"}), "invalid_field"),
        (twilio_start(), "unexpected_start"),
    ],
)
def test_bad_twilio_frames_are_errors_that_send_nothing(frame, code):
    t = started_twilio()
    out = t.from_carrier(frame, 1)
    assert [e.code for e in out.errors] == [code]
    assert out.to_carrier == [] and out.to_session == []
    ok = t.from_carrier(twilio("media", 3, media=media(bytes(160), 3)), 1)  # the call goes on
    assert not ok.errors


def test_media_before_start_is_an_error():
    out = TwilioTranslator().from_carrier(twilio("media", 2, media=media(bytes(160), 2)), 0)
    assert [e.code for e in out.errors] == ["media_before_start"] and not out.to_session


def reply_audio(t, turn_id: str, frames: int) -> list[list]:
    """The carrier frames of a response of ``frames`` 40 ms v1 frames."""
    assert t.from_session(v1(p.ResponseCreated(turn_id=turn_id))).to_carrier == []
    return [t.from_session(np.full(640, 2000, dtype="<i2").tobytes()).to_carrier for _ in range(frames)]


def test_twilio_reply_audio_is_media_then_a_mark_and_clear_keeps_what_marks_confirmed():
    t = started_twilio()
    chunks = reply_audio(t, "turn_1", 9)
    marks, sent = [], 0
    for chunk in chunks:
        if not chunk:  # soxr emits in blocks (~100 ms): no audio left, so no mark either
            continue
        media, mark = (json.loads(f) for f in chunk)
        assert (media["event"], mark["event"]) == ("media", "mark")
        assert media["streamSid"] == mark["streamSid"] == SID
        sent += len(base64.b64decode(media["media"]["payload"]))  # raw μ-law at 8 kHz
        marks.append((mark["mark"]["name"], sent / 8))  # the mark counts the audio sent before it
    assert len(marks) >= 2 and chunks[0] == []
    # The carrier played up to the first mark before the caller spoke over the reply.
    first_name, first_ms = marks[0]
    assert not t.from_carrier(twilio("mark", 10, mark={"name": first_name}), 1).errors
    out = t.from_session(v1(p.ResponseInterrupted(turn_id="turn_1", played_ms=160, heard_text="x")))
    assert [json.loads(f) for f in out.to_carrier] == [{"event": "clear", "streamSid": SID}]
    assert [p.parse_client_event(f) for f in out.to_session] == [
        p.PlaybackPosition(turn_id="turn_1", played_ms=first_ms)
    ]
    # Twilio returns every pending mark after a clear: they change nothing.
    for seq, (name, _ms) in enumerate(marks[1:], start=20):
        assert not t.from_carrier(twilio("mark", seq, mark={"name": name}), 1).errors
    assert t._replies["turn_1"].heard_ms == first_ms
    # Nothing more of the interrupted reply goes out.
    assert t.from_session(bytes(640)).to_carrier == []
    assert t.from_session(done("interrupted")).to_carrier == []


def test_a_completed_reply_ends_with_the_resampler_tail_and_a_last_mark():
    t = started_twilio()
    reply_audio(t, "turn_1", 3)
    out = t.from_session(done("completed"))
    assert [json.loads(f)["event"] for f in out.to_carrier] == ["media", "mark"]


def test_a_cancelled_reply_is_cleared_too():
    t = started_twilio()
    reply_audio(t, "turn_1", 3)
    out = t.from_session(done("cancelled"))
    assert [json.loads(f)["event"] for f in out.to_carrier] == ["clear"]
    assert p.parse_client_event(out.to_session[0]) == p.PlaybackPosition(turn_id="turn_1", played_ms=0.0)


def test_dtmf_digits_are_batched_into_one_text_turn():
    t = started_twilio()
    for seq, (digit, at) in enumerate([("1", 0.0), ("2", 0.5), ("3", 1.0)], start=2):
        out = t.from_carrier(twilio("dtmf", seq, dtmf={"track": "inbound_track", "digit": digit}), at)
        assert out.to_session == [] and ("call.dtmf", {"digit": digit}) in out.notes
    out = t.from_carrier(twilio("media", 9, media=media(bytes(160), 9)), 2.6)  # 1.6 s later
    texts = [f for f in out.to_session if isinstance(f, str)]
    assert [p.parse_client_event(f).text for f in texts] == ["The caller pressed 1, 2 and 3 on the keypad."]
    out = t.from_carrier(twilio("dtmf", 10, dtmf={"digit": "5"}), 3)
    assert out.to_session == []
    out = t.from_carrier(twilio("dtmf", 11, dtmf={"digit": "#"}), 3.2)  # "#" ends a batch at once
    assert [p.parse_client_event(f).text for f in out.to_session] == ["The caller pressed 5 and # on the keypad."]


def test_custom_parameters_set_instructions_only_when_allowlisted():
    parameters = {"instructions": "Say no.", "persona": "You are a dentist's receptionist."}
    for allowlist, expected in (((), None), (("prompt",), None), (("persona", "instructions"), parameters["persona"])):
        t = TwilioTranslator(instruction_params=allowlist)
        out = t.from_carrier(twilio_start(parameters), 0)
        updates = [p.parse_client_event(f) for f in out.to_session]
        if expected is not None:
            assert updates == [p.SessionUpdate(session=p.SessionPatch(instructions=expected))]
        else:
            assert updates == [] and "call.instructions_ignored" in [name for name, _ in out.notes]


def test_stop_ends_the_stream():
    t = started_twilio()
    assert t.from_carrier(twilio("stop", 5, stop={"accountSid": "AC0", "callSid": "CA0"}), 1).ended


# --- Telnyx ---------------------------------------------------------------------------------------

STREAM = "32de0dea-53cb-4b21-89a4-9e1819c043bc"


def telnyx(event: str, seq: int, **fields) -> str:
    return json.dumps({"event": event, "sequence_number": str(seq), "stream_id": STREAM, **fields})


def started_telnyx(encoding="PCMU", rate=8000) -> TelnyxTranslator:
    t = TelnyxTranslator()
    t.from_carrier(json.dumps({"event": "connected", "version": "1.0.0"}), 0)
    start = {"call_control_id": "v3:abc", "media_format": {"encoding": encoding, "sample_rate": rate, "channels": 1}}
    assert not t.from_carrier(telnyx("start", 1, start=start), 0).errors
    return t


def tone(level: int) -> bytes:
    return ulaw_encode(np.full(160, level))


def test_telnyx_media_out_of_order_is_reordered_by_sequence_number():
    in_order, shuffled = started_telnyx(), started_telnyx()
    levels = {seq: 500 * seq for seq in range(2, 12)}

    def feed(t: TelnyxTranslator, seq: int) -> bytes:
        return b"".join(t.from_carrier(telnyx("media", seq, media=media(tone(levels[seq]), seq)), 0).to_session)

    expected = b"".join(feed(in_order, s) for s in levels)
    got = b""
    for s in [3, 2, 5, 4, 6, 8, 7, 9, 11, 10]:
        out = shuffled.from_carrier(telnyx("media", s, media=media(tone(levels[s]), s)), 0)
        assert not out.errors
        got += b"".join(out.to_session)
    assert len(got) == len(expected) > 0
    difference = np.frombuffer(got, "<i2").astype(int) - np.frombuffer(expected, "<i2")
    assert np.abs(difference).max() <= 2  # (soxr's output varies by a unit from run to run)


def test_telnyx_other_events_take_sequence_numbers_too():
    t = started_telnyx()
    t.from_carrier(telnyx("media", 2, media=media(tone(1000), 2)), 0)
    t.from_carrier(telnyx("media", 4, media=media(tone(1000), 4)), 0)
    assert len(t._held) == 1  # waiting for 3
    t.from_carrier(telnyx("dtmf", 3, dtmf={"digit": "1"}), 0)
    assert t._held == [] and t._next_seq == 5  # 3 was no media: 4 is not held back


def test_a_telnyx_error_event_is_logged_not_refused():
    t = started_telnyx()
    out = t.from_carrier(json.dumps({"event": "error", "payload": {"code": 100002, "title": "Unknown error"}}), 0)
    assert not out.errors and out.notes[0][0] == "call.carrier_error" and not out.to_carrier


def test_telnyx_gives_up_a_gap_after_the_window_and_drops_late_media():
    t = started_telnyx()
    released = 0
    for s in range(3, 10):  # 2 never comes
        released += len(t.from_carrier(telnyx("media", s, media=media(tone(1000), s)), 0).to_session)
    assert released > 0
    late = t.from_carrier(telnyx("media", 2, media=media(tone(1000), 2)), 0)
    assert late.to_session == [] and late.notes[0][0] == "call.media_late"


def test_telnyx_speaks_pcma_and_its_frames_have_no_stream_sid_on_the_way_out():
    t = started_telnyx("PCMA")
    assert t.audio.format.encoding == "alaw"
    chunk = [f for c in reply_audio(t, "turn_1", 3) for f in c]
    assert [sorted(json.loads(f)) for f in chunk[-2:]] == [["event", "media"], ["event", "mark"]]
    out = t.from_carrier(telnyx("start", 9, start={"media_format": {"encoding": "OPUS", "sample_rate": 16000}}), 0)
    assert out.errors
    t2 = TelnyxTranslator()
    out = t2.from_carrier(telnyx("start", 1, start={"media_format": {"encoding": "OPUS", "sample_rate": 16000}}), 0)
    assert [e.code for e in out.errors] == ["unsupported_format"]


# --- Vonage ---------------------------------------------------------------------------------------


def started_vonage(rate=16000) -> VonageTranslator:
    t = VonageTranslator()
    out = t.from_carrier(json.dumps({"event": "websocket:connected", "content-type": f"audio/l16;rate={rate}"}), 0)
    assert not out.errors
    return t


def test_vonage_binary_frames_both_ways_in_20_ms_frames():
    t = started_vonage()
    out = t.from_carrier(np.full(320, 1000, dtype="<i2").tobytes(), 0)
    assert b"".join(out.to_session) == np.full(320, 1000, dtype="<i2").tobytes()  # 16 kHz: as it is
    t.from_session(v1(p.ResponseCreated(turn_id="turn_1")))
    chunk = t.from_session(np.full(700, 5, dtype="<i2").tobytes()).to_carrier  # 43.75 ms
    assert [len(f) for f in chunk[:-1]] == [640, 640] and json.loads(chunk[-1])["action"] == "notify"
    end = t.from_session(done("completed"))
    assert [len(f) if isinstance(f, bytes) else json.loads(f)["action"] for f in end.to_carrier] == [640, "notify"]


def test_vonage_notify_is_the_mark_and_clear_is_an_action():
    t = started_vonage(8000)
    assert t.audio.format.rate == 8000
    chunks = [c for c in reply_audio(t, "turn_1", 9) if c]  # (soxr emits in blocks at 16 -> 8 kHz)
    names = [json.loads(c[-1])["payload"]["mark"] for c in chunks]
    assert all(len(f) == 320 for c in chunks for f in c[:-1])  # 20 ms of L16 at 8 kHz
    t.from_carrier(json.dumps({"event": "websocket:notify", "payload": {"mark": names[0]}}), 0)
    out = t.from_session(v1(p.ResponseInterrupted(turn_id="turn_1", played_ms=100, heard_text="")))
    assert [json.loads(f) for f in out.to_carrier] == [{"action": "clear"}]
    assert p.parse_client_event(out.to_session[0]).played_ms == 20.0 * (len(chunks[0]) - 1)  # the frames sent
    assert not t.from_carrier(json.dumps({"event": "websocket:cleared"}), 0).errors


def test_vonage_dtmf_and_bad_frames():
    t = started_vonage()
    t.from_carrier(json.dumps({"event": "websocket:dtmf", "digit": "7", "duration": 260}), 0)
    out = t.from_carrier(json.dumps({"event": "websocket:dtmf", "digit": "#", "duration": 260}), 0.1)
    assert [p.parse_client_event(f).text for f in out.to_session] == ["The caller pressed 7 and # on the keypad."]
    assert [e.code for e in t.from_carrier(b"\x01\x02\x03", 0).errors] == ["invalid_audio"]
    assert [e.code for e in t.from_carrier("nope", 0).errors] == ["invalid_json"]
    early = VonageTranslator()
    assert [e.code for e in early.from_carrier(bytes(640), 0).errors] == ["media_before_start"]
    opus = json.dumps({"event": "websocket:connected", "content-type": "audio/opus"})
    wrong = VonageTranslator().from_carrier(opus, 0)
    assert [e.code for e in wrong.errors] == ["unsupported_format"]


# --- Twilio's signature -----------------------------------------------------------------------------


def test_twilio_signature_matches_twilios_documented_example():
    from voiceorch.telephony.signature import twilio_signature, twilio_signature_valid

    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+12349013030",
        "Digits": "1234",
        "From": "+12349013030",
        "To": "+18005551212",
    }
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    assert twilio_signature_valid("12345", url, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", params)
    assert not twilio_signature_valid("12345", url, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", {**params, "Digits": "9"})
    assert not twilio_signature_valid("other", url, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=", params)
    assert not twilio_signature_valid("12345", url, None, params)
    wss = "wss://voice.example.com/v1/twilio?token=abc"  # an upgrade is a GET: the URL alone
    assert twilio_signature_valid("12345", wss, twilio_signature("12345", wss))
