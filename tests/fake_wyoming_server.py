"""A FAKE Wyoming STT/TTS server for tests (Trio TCP on 127.0.0.1, a port chosen by the OS).

Start it with ``port = await nursery.start(server.serve)``; it serves until the nursery is
cancelled. It speaks real Wyoming framing (the ``wyoming`` package's encoder, our decoder) and
answers by ``mode``, read per request so a test may change it:

- ``"answer"``: after ``audio-stop`` a ``transcript`` of :attr:`text`; after a synthesis
  request :attr:`audio_chunks` chunks of a 440 Hz tone at :attr:`rate` (``audio-stop``, and
  ``synthesize-stopped`` for a streaming request);
- ``"streamed"``: ``transcript-start``, one ``transcript-chunk`` per word, ``transcript-stop``,
  then the connection is closed (no final ``transcript``);
- ``"error"``: an ``error`` event;
- ``"close"``: the connection is closed without an answer;
- ``"garbage"``: a line that is not JSON;
- ``"stall"``: no answer (TTS: ``audio-start`` and one chunk first, then
  :attr:`first_audio_sent` is set); waits until the client goes and sets
  :attr:`client_disconnected`;
- ``"flood"``: an answer that never ends: ``transcript-start`` then ``transcript-chunk``
  events of :attr:`text`, or ``audio-start`` then audio chunks, until the client goes (then
  :attr:`client_disconnected` is set).

Every event received is kept in :attr:`received` (type, data) per connection.
"""

from __future__ import annotations

from typing import Literal

import attrs
import numpy as np
import trio
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.info import AsrProgram, Attribution, Info, TtsProgram, TtsVoice
from wyoming.tts import SynthesizeStopped

from voiceorch.engines.wyoming_client import WyomingConnection

Mode = Literal["answer", "streamed", "error", "close", "garbage", "stall", "flood"]

_ATTRIBUTION = Attribution(name="fake", url="")


@attrs.define(kw_only=True)
class FakeWyomingServer:
    mode: Mode = "answer"
    text: str = "hello from the fake"
    rate: int = 22050
    audio_chunks: int = 4
    samples_per_chunk: int = 1024
    #: What ``info`` advertises for synthesis.
    supports_synthesize_streaming: bool = True
    received: list[list[tuple[str, dict]]] = attrs.field(factory=list)
    connections: int = 0
    #: Set when a whole request (up to ``audio-stop``, ``synthesize`` or ``synthesize-stop``) is in.
    request_received: trio.Event = attrs.field(factory=trio.Event)
    first_audio_sent: trio.Event = attrs.field(factory=trio.Event)
    client_disconnected: trio.Event = attrs.field(factory=trio.Event)
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.port)

    def info(self) -> Info:
        asr = AsrProgram(
            name="fake-asr",
            attribution=_ATTRIBUTION,
            installed=True,
            description="fake",
            version="0",
            models=[],
        )
        voice = TtsVoice(
            name="fake-voice",
            attribution=_ATTRIBUTION,
            installed=True,
            description="fake",
            version="0",
            languages=["en"],
        )
        tts = TtsProgram(
            name="fake-tts",
            attribution=_ATTRIBUTION,
            installed=True,
            description="fake",
            version="0",
            voices=[voice],
            supports_synthesize_streaming=self.supports_synthesize_streaming,
        )
        return Info(asr=[asr], tts=[tts])

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = WyomingConnection(stream)
        log: list[tuple[str, dict]] = []
        self.received.append(log)
        streaming = False
        try:
            while True:
                event = await conn.receive()
                log.append((event.type, dict(event.data)))
                if event.type == "describe":
                    await conn.send(self.info().event())
                elif event.type == "audio-stop":
                    self.request_received.set()
                    await self._answer_stt(conn)
                    return
                elif event.type == "synthesize-start":
                    streaming = True
                elif (event.type == "synthesize" and not streaming) or event.type == "synthesize-stop":
                    self.request_received.set()
                    await self._answer_tts(conn, streaming)
                    if self.mode != "answer":
                        return
                    streaming = False
        except Exception:  # the client went away (or sent garbage): this connection is over
            pass
        finally:
            await stream.aclose()

    async def _answer_stt(self, conn: WyomingConnection) -> None:
        if self.mode == "answer":
            await conn.send(Transcript(text=self.text).event())
        elif self.mode == "streamed":
            chunks = [TranscriptChunk(text=word + " ").event() for word in self.text.split()]
            await conn.send(TranscriptStart().event(), *chunks, TranscriptStop().event())
        elif self.mode == "flood":
            await conn.send(TranscriptStart().event())
            await self._flood(conn, TranscriptChunk(text=self.text).event())
        else:
            await self._misbehave(conn)

    async def _flood(self, conn: WyomingConnection, event) -> None:
        try:
            while True:
                await conn.send(event)
        except Exception:  # the client went away
            self.client_disconnected.set()

    async def _answer_tts(self, conn: WyomingConnection, streaming: bool) -> None:
        audio_format = {"rate": self.rate, "width": 2, "channels": 1}
        if self.mode == "stall":
            await conn.send(AudioStart(**audio_format).event(), AudioChunk(audio=self._tone(0), **audio_format).event())
            self.first_audio_sent.set()
            await self._wait_for_client(conn)
            return
        if self.mode == "flood":
            await conn.send(AudioStart(**audio_format).event())
            await self._flood(conn, AudioChunk(audio=self._tone(0), **audio_format).event())
            return
        if self.mode != "answer":
            await self._misbehave(conn)
            return
        events = [AudioStart(**audio_format).event()]
        events += [AudioChunk(audio=self._tone(i), **audio_format).event() for i in range(self.audio_chunks)]
        events.append(AudioStop().event())
        if streaming:
            events.append(SynthesizeStopped().event())
        await conn.send(*events)

    async def _misbehave(self, conn: WyomingConnection) -> None:
        if self.mode == "error":
            await conn.send(Error(text="the fake failed on purpose", code="FakeError").event())
        elif self.mode == "garbage":
            await conn.stream.send_all(b"this is not json\n")
        elif self.mode == "stall":
            await self._wait_for_client(conn)
        # "close": return, and the connection is closed

    async def _wait_for_client(self, conn: WyomingConnection) -> None:
        while await conn.stream.receive_some(65536):
            pass
        self.client_disconnected.set()

    def _tone(self, index: int) -> bytes:
        n = self.samples_per_chunk
        t = (np.arange(n) + index * n) / self.rate
        return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()
