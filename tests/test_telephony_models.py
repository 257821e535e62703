"""A Twilio call against the real embedded speech models (slow: ``-m models``): the caller's
question streamed as 8 kHz μ-law is transcribed by faster-whisper after the phone path, and the
reply comes back as μ-law media that the same STT recognises."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from functools import partial

import pytest
import trio
import trio_websocket

from conftest import DATA
from test_telephony_ws import HOST, START, twilio_frames
from voiceorch import protocol as p
from voiceorch.audio_files import read_as_wire_pcm
from voiceorch.engines.base import ChatMessage, Engines
from voiceorch.engines.embedded import piper_voice_path, whisper_model_dir
from voiceorch.engines.fakes import FakeLLM
from voiceorch.engines.piper_tts import PiperTTS
from voiceorch.engines.silero_vad import SileroVAD
from voiceorch.engines.whisper_stt import WhisperSTT
from voiceorch.server.voice_ws import serve_voice
from voiceorch.session import SessionSettings
from voiceorch.telephony import CallAudio, CallFormat, ulaw_decode

pytestmark = pytest.mark.models
#: JFK pauses for breath: a turn ends after 1.2 s of silence here, so the question is one turn.
SETTINGS = SessionSettings(turn_detection=p.TurnDetection(silence_duration_ms=1200))
REPLY = "My fellow Americans, ask what you can do for your country."


class QuoteLLM(FakeLLM):
    """FAKE LLM (the STT and TTS are real): answers every turn with ``REPLY``."""

    async def stream_reply(self, messages: Sequence[ChatMessage], deltas: trio.MemorySendChannel[str]):
        return await super().stream_reply(messages, deltas)


def words(text: str) -> set[str]:
    return {w.strip(".,?!").lower() for w in text.split()}


async def test_a_spoken_question_over_twilio_is_answered_with_mulaw_speech_the_stt_recognises():
    stt = WhisperSTT.load(whisper_model_dir())
    engines = Engines(
        stt=stt,
        llm=QuoteLLM(reply=REPLY, first_delay=0.01, delta_delay=0.001),
        tts=PiperTTS.load(piper_voice_path()),
        vad=SileroVAD.load(),
    )
    phone = CallAudio(CallFormat("mulaw", 8000))
    question = phone.from_v1(read_as_wire_pcm(DATA / "jfk_16k.wav")) + phone.flush_out()
    reply = bytearray()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(serve_voice, engines, SETTINGS, host=HOST, port=0))
            async with trio_websocket.open_websocket_url(f"ws://{HOST}:{server.port}/v1/twilio") as ws:
                await ws.send_message(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                await ws.send_message(START["twilio"])
                last_media = trio.current_time() + 1000

                async def read() -> None:
                    nonlocal last_media
                    while True:
                        data = json.loads(await ws.get_message())
                        if data["event"] == "media":
                            reply.extend(base64.b64decode(data["media"]["payload"]))
                            last_media = trio.current_time()
                        elif data["event"] == "mark":  # played at once
                            await ws.send_message(twilio_frames("mark", 0, mark=data["mark"]))

                inner = trio.CancelScope()

                async def reader() -> None:
                    with inner:
                        await read()

                nursery.start_soon(reader)
                silence = bytes([0xFF]) * 160
                for seq, offset in enumerate(range(0, len(question) + 160 * 60, 160), start=2):
                    chunk = question[offset : offset + 160] or silence  # then 1.2 s of silence
                    media = {
                        "track": "inbound",
                        "chunk": str(seq),
                        "timestamp": str(seq * 20),
                        "payload": base64.b64encode(chunk.ljust(160, b"\xff")).decode(),
                    }
                    await ws.send_message(twilio_frames("media", seq, media=media))
                    await trio.sleep(0.01)  # twice real time
                while not reply or trio.current_time() - last_media < 1.0:
                    idle = {"payload": base64.b64encode(silence).decode()}
                    await ws.send_message(twilio_frames("media", 9999, media=idle))
                    await trio.sleep(0.02)
                (session,) = server.sessions
                heard = " ".join(m.content for m in session.conversation.messages if m.role == "user")
                inner.cancel()
            nursery.cancel_scope.cancel()
    assert {"ask", "not", "what", "your", "country"} <= words(heard)
    pcm16k = CallAudio(CallFormat("mulaw", 8000)).to_v1(bytes(reply))
    assert len(ulaw_decode(bytes(reply))) / 8000 > 1.5  # seconds of reply speech
    said = await stt.transcribe(pcm16k + bytes(16000))
    assert len(words(said) & words(REPLY)) >= 6, said
