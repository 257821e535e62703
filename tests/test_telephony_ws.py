"""The telephony endpoints over real WebSockets on loopback: ``serve_voice`` in-process with
fake engines, and a client per carrier that speaks its documented wire format (numbers as
strings, marks echoed as the carrier would, clear). A DTMF turn answered with media frames
and marks, for each carrier; a barge-in that ends in ``clear``, with the history trimmed to
what the marks confirmed the caller heard."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
from collections.abc import AsyncIterator
from functools import partial

import numpy as np
import pytest
import trio
import trio_websocket

from session_harness import fake_engines
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS
from voiceorch.server.voice_ws import serve_voice
from voiceorch.session import SessionSettings
from voiceorch.telephony import CallAudio, CallFormat, ulaw_encode

HOST = "127.0.0.1"
SID = "MZ00000000000000000000000000000001"
REPLY = "Sure thing. Here is a short answer. Anything else?"


def engines():
    return fake_engines(
        stt=FakeSTT(delay=0.01),
        llm=FakeLLM(reply=REPLY, first_delay=0.01, delta_delay=0.001),
        tts=FakeTTS(delay=0.001, ms_per_char=60),
    )


def twilio_frames(event: str, seq: int, **fields) -> str:
    return json.dumps({"event": event, "sequenceNumber": str(seq), "streamSid": SID, **fields})


START = {
    "twilio": twilio_frames(
        "start",
        1,
        start={
            "accountSid": "AC0",
            "streamSid": SID,
            "callSid": "CA0",
            "tracks": ["inbound"],
            "customParameters": {},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    ),
    "telnyx": json.dumps(
        {
            "event": "start",
            "sequence_number": "1",
            "stream_id": SID,
            "start": {
                "call_control_id": "v3:0",
                "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
            },
        }
    ),
    "vonage": json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000"}),
}


def media_frame(carrier: str, seq: int, payload: bytes) -> str | bytes:
    """One 20 ms frame of caller audio as the carrier sends it (``payload``: μ-law 8 kHz, or
    Vonage's L16 16 kHz, sent as the binary frame itself)."""
    if carrier == "vonage":
        return payload
    media = {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20)}
    media["payload"] = base64.b64encode(payload).decode()
    key = "streamSid" if carrier == "twilio" else "stream_id"
    seq_key = "sequenceNumber" if carrier == "twilio" else "sequence_number"
    return json.dumps({"event": "media", seq_key: str(seq), key: SID, "media": media})


def caller_payload(carrier: str, level: int) -> bytes:
    if carrier == "vonage":
        return np.full(320, level, dtype="<i2").tobytes()
    return ulaw_encode(np.full(160, level))


def caller_frame(carrier: str, seq: int, level: int) -> str | bytes:
    return media_frame(carrier, seq, caller_payload(carrier, level))


def phone_frames(carrier: str, pcm16k: bytes) -> list[bytes]:
    """16 kHz PCM as the carrier's 20 ms caller payloads (μ-law 8 kHz through soxr, as a phone
    line would carry it; Vonage's L16 16 kHz as it is)."""
    if carrier == "vonage":
        data = pcm16k + bytes(-len(pcm16k) % 640)
        return [data[i : i + 640] for i in range(0, len(data), 640)]
    line = CallAudio(CallFormat("mulaw", 8000))
    data = line.from_v1(pcm16k) + line.flush_out()
    data += b"\xff" * (-len(data) % 160)
    return [data[i : i + 160] for i in range(0, len(data), 160)]


def dtmf_frame(carrier: str, seq: int, digit: str) -> str:
    if carrier == "vonage":
        return json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 250})
    key = "streamSid" if carrier == "twilio" else "stream_id"
    seq_key = "sequenceNumber" if carrier == "twilio" else "sequence_number"
    return json.dumps({"event": "dtmf", seq_key: str(seq), key: SID, "dtmf": {"digit": digit}})


class Carrier:
    """One call's carrier side: streams caller audio in real time (queued speech, else a constant
    ``level``), reads what the server sends, and echoes each mark (notify) as if the audio before
    it had played, up to ``play_until_ms`` of reply audio (None: all of it; a stalled playback
    after). Telnyx media goes out in swapped pairs when ``reorder`` is set (Telnyx does not
    guarantee their order)."""

    def __init__(self, ws, carrier: str, *, reorder: bool = False) -> None:
        self.ws, self.carrier = ws, carrier
        self.reorder = reorder and carrier == "telnyx"
        self.seq = 1
        self.level = 0
        self.speech: collections.deque[bytes] = collections.deque()
        self.play_until_ms: float | None = None
        self.silent = False  # sends no more caller audio
        self.received: list = []
        self.audio_frames = 0
        self.reply_audio = bytearray()  # every reply payload, in order
        self.media_at: list[tuple[float, float]] = []  # (arrival time, reply audio ms before it)
        self.audio_ms = 0.0  # reply audio received
        self.played_ms = 0.0  # up to the last mark echoed
        self.echoed = 0
        self.held_mark = trio.Event()  # a mark was not echoed (playback stalled)
        self.cleared = trio.Event()
        self.marks = trio.Event()
        self._lock = trio.Lock()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def send(self, frame: str | bytes) -> None:
        async with self._lock:
            await self.ws.send_message(frame)

    def say(self, pcm16k: bytes) -> None:
        """Queue speech (16 kHz PCM) to go out next, at real time."""
        self.speech.extend(phone_frames(self.carrier, pcm16k))

    def _payload(self) -> bytes:
        return self.speech.popleft() if self.speech else caller_payload(self.carrier, self.level)

    async def stream(self) -> None:
        while not self.silent:
            if self.reorder:  # frame n+1 first, then frame n
                first_seq, second_seq = self.next_seq(), self.next_seq()
                first, second = self._payload(), self._payload()
                await self.send(media_frame(self.carrier, second_seq, second))
                await self.send(media_frame(self.carrier, first_seq, first))
                await trio.sleep(0.04)
                continue
            await self.send(media_frame(self.carrier, self.next_seq(), self._payload()))
            await trio.sleep(0.02)

    async def read(self) -> None:
        bytes_per_ms = 32 if self.carrier == "vonage" else 8  # L16 16 kHz / μ-law 8 kHz
        while True:
            frame = await self.ws.get_message()
            self.received.append(frame)
            if isinstance(frame, bytes):
                self.audio_frames += 1
                self.reply_audio.extend(frame)
                self.audio_ms += len(frame) / bytes_per_ms
                continue
            data = json.loads(frame)
            kind = data.get("event", data.get("action"))
            if kind == "media":
                payload = base64.b64decode(data["media"]["payload"])
                assert payload
                self.media_at.append((trio.current_time(), self.audio_ms))
                self.audio_frames += 1
                self.reply_audio.extend(payload)
                self.audio_ms += len(payload) / bytes_per_ms
            elif kind in ("mark", "notify"):
                self.marks.set()
                if self.play_until_ms is None or self.audio_ms <= self.play_until_ms:
                    self.echoed += 1
                    self.played_ms = self.audio_ms
                    await self.send(self.echo(data))
                else:
                    self.held_mark.set()
            elif kind == "clear":
                self.cleared.set()

    def echo(self, data: dict) -> str:
        if self.carrier == "vonage":
            return json.dumps({"event": "websocket:notify", "payload": data["payload"]})
        key = "streamSid" if self.carrier == "twilio" else "stream_id"
        seq_key = "sequenceNumber" if self.carrier == "twilio" else "sequence_number"
        return json.dumps({"event": "mark", seq_key: str(self.next_seq()), key: SID, "mark": data["mark"]})


@contextlib.asynccontextmanager
async def open_call(url: str, carrier: str, *, headers=(), reorder: bool = False) -> AsyncIterator[Carrier]:
    """A call to ``url`` (the server's ``/v1/<carrier>``): the carrier's opening messages, then
    a :class:`Carrier` streaming and reading until the block exits."""
    extra = [(name.encode(), value.encode()) for name, value in headers]
    async with trio_websocket.open_websocket_url(url, extra_headers=extra) as ws:
        if carrier != "vonage":
            await ws.send_message(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send_message(START[carrier])
        phone = Carrier(ws, carrier, reorder=reorder)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(phone.stream)
            nursery.start_soon(phone.read)
            yield phone
            nursery.cancel_scope.cancel()


async def call(carrier: str, scenario) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_voice, engines(), SessionSettings(), host=HOST, port=0))
            async with open_call(f"ws://{HOST}:{server.port}/v1/{carrier}", carrier) as phone:
                await scenario(phone, server)
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "vonage"])
async def test_a_dtmf_turn_is_answered_with_audio_and_marks(carrier):
    async def scenario(phone: Carrier, server) -> None:
        await trio.sleep(0.1)
        await phone.send(dtmf_frame(carrier, phone.next_seq(), "4"))
        await phone.send(dtmf_frame(carrier, phone.next_seq(), "#"))
        await phone.marks.wait()
        while phone.audio_frames < 10:
            await trio.sleep(0.05)
        (session,) = server.sessions
        while not session.conversation.messages:  # (the exchange is kept when its response ends)
            await trio.sleep(0.05)
        assert session.conversation.messages[0].content == "The caller pressed 4 and # on the keypad."

    await call(carrier, scenario)


@pytest.mark.parametrize("carrier", ["twilio", "telnyx", "vonage"])
async def test_a_barge_in_ends_in_clear_and_the_history_keeps_what_the_marks_confirmed(carrier):
    async def scenario(phone: Carrier, server) -> None:
        await trio.sleep(0.1)
        phone.play_until_ms = 760  # "Sure thing." (660 ms) and no more; then the playback stalls
        await phone.send(dtmf_frame(carrier, phone.next_seq(), "#"))
        await phone.held_mark.wait()
        assert 660 <= phone.played_ms <= 760
        await trio.sleep(1.0)  # (the server's own estimate runs on)
        phone.level = 4000  # and the caller speaks over the rest
        await phone.cleared.wait()
        phone.level = 0
        (session,) = server.sessions
        while session.conversation.messages[-1].role != "assistant" or session._unfinished:
            await trio.sleep(0.02)
        assert session.conversation.messages[-1].content == "Sure thing."

    await call(carrier, scenario)
