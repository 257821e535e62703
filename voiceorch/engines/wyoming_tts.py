"""Text-to-speech from a Wyoming server (wyoming-piper and the like), over Trio."""

from __future__ import annotations

from typing import Literal

import attrs
import trio
from wyoming.audio import AudioChunk, AudioStop
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from .base import EngineError, TextToSpeech
from .pcm import check_format, to_engine_pcm
from .remote_errors import MAX_SENTENCE_AUDIO_S, remote_call, warm_up_or_warn
from .wyoming_client import (
    WyomingAddress,
    WyomingConnection,
    WyomingProtocolError,
    describe,
    open_wyoming,
)

Streaming = Literal["auto", "on", "off"]


@attrs.define(kw_only=True)
class WyomingTTS(TextToSpeech):
    """Synthesizes over the Wyoming protocol, one connection per sentence.

    With a server that offers streaming synthesis (its ``info`` says
    ``supports_synthesize_streaming``, as wyoming-piper's does) a sentence goes as
    ``synthesize-start``, ``synthesize-chunk``, ``synthesize`` (for older servers),
    ``synthesize-stop``, and the audio is read up to ``synthesize-stopped``; otherwise as one
    ``synthesize``, read up to ``audio-stop``. ``streaming="auto"`` asks the server once
    (``describe``, on the first call's connection); ``"on"``/``"off"`` decide without asking.
    The audio (any rate, mono or not, 16-bit) is resampled to 16 kHz mono with soxr, in a
    worker thread (under :attr:`decode_limiter`). More than :data:`MAX_SENTENCE_AUDIO_S` of
    audio for one sentence (at the server's rate) is ``tts_failed``.
    """

    address: WyomingAddress
    #: The server's voice name (``synthesize``'s ``voice.name``); None: the server's default.
    voice: str | None = None
    speaker: str | None = None
    streaming: Streaming = "auto"
    connect_timeout: float = 2.0
    #: Bound on one sentence, connecting included (``tts_timeout`` after it).
    timeout: float = 15.0
    #: Our requests in flight to this server at once; more wait here (cancellable).
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(4))
    #: Whether the server streams, once known.
    server_streams: bool | None = None
    #: Resampling of replies, one at a time, in a worker thread.
    decode_limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1), repr=False)

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM.

        Blank text gives ``b""`` without a request. Cancellation (barge-in) closes the
        connection at once, so the server sees the client go, and abandons a resampling under
        way (its thread finishes on its own). Raises :class:`EngineError` ``tts_unavailable``,
        ``tts_timeout`` or ``tts_failed``.
        """
        if not text.strip():
            return b""
        where = f"Wyoming TTS server {self.address}"
        async with self.limiter:
            with remote_call("tts", where, self.timeout):
                async with open_wyoming(self.address, connect_timeout=self.connect_timeout) as conn:
                    streaming = await self._use_streaming(conn)
                    voice = SynthesizeVoice(name=self.voice, speaker=self.speaker) if self.voice else None
                    if streaming:
                        await conn.send(
                            SynthesizeStart(voice=voice).event(),
                            SynthesizeChunk(text=text).event(),
                            Synthesize(text=text, voice=voice).event(),
                            SynthesizeStop().event(),
                        )
                    else:
                        await conn.send(Synthesize(text=text, voice=voice).event())
                    try:
                        runs = await _read_audio(conn, streaming)
                    except ValueError as exc:  # an audio format we cannot use
                        raise EngineError("tts_failed", f"{where}: {exc}") from exc
        try:
            return await trio.to_thread.run_sync(_convert, runs, abandon_on_cancel=True, limiter=self.decode_limiter)
        except ValueError as exc:
            raise EngineError("tts_failed", f"{where}: {exc}") from exc

    async def _use_streaming(self, conn: WyomingConnection) -> bool:
        if self.streaming != "auto":
            return self.streaming == "on"
        if self.server_streams is None:
            info = await describe(conn)
            self.server_streams = any(
                program.installed and program.supports_synthesize_streaming for program in info.tts
            )
        return self.server_streams

    async def check_ready(self) -> str | None:
        """``None`` if the server answers ``describe`` with a text-to-speech program, else why not."""
        try:
            with remote_call("tts", f"Wyoming TTS server {self.address}", self.timeout):
                async with open_wyoming(self.address, connect_timeout=self.connect_timeout) as conn:
                    info = await describe(conn)
        except EngineError as exc:
            return exc.message
        if not any(program.installed for program in info.tts):
            return f"Wyoming server {self.address} offers no text-to-speech"
        return None

    async def warm_up(self) -> None:
        """Check the server offers text-to-speech, then synthesize one short sentence. A
        failure is logged as a warning, not raised (see :func:`warm_up_or_warn`)."""
        await warm_up_or_warn("tts", str(self.address), self._warm_up)

    async def _warm_up(self) -> None:
        reason = await self.check_ready()
        if reason is not None:
            raise EngineError("tts_unavailable", reason)
        await self.synthesize("Hello.")


AudioRuns = list[tuple[tuple[int, int, int], bytearray]]


async def _read_audio(conn: WyomingConnection, streaming: bool) -> AudioRuns:
    """Audio events up to the end of the answer, as runs of chunks in one format (rate,
    width, channels). ``ValueError`` for a format :func:`to_engine_pcm` cannot convert, or
    once the audio is longer than :data:`MAX_SENTENCE_AUDIO_S`."""
    runs: AudioRuns = []
    seconds = 0.0
    while True:
        event = await conn.receive()
        if AudioChunk.is_type(event.type):
            try:
                chunk = AudioChunk.from_event(event)
            except (KeyError, TypeError) as exc:
                raise WyomingProtocolError(f"bad audio-chunk event ({exc!r})") from exc
            audio_format = (chunk.rate, chunk.width, chunk.channels)
            if not runs or runs[-1][0] != audio_format:
                check_format(rate=chunk.rate, width=chunk.width, channels=chunk.channels)
                runs.append((audio_format, bytearray()))
            seconds += len(chunk.audio) / (chunk.rate * chunk.width * chunk.channels)
            if seconds > MAX_SENTENCE_AUDIO_S:
                raise ValueError(f"more than {MAX_SENTENCE_AUDIO_S} s of audio for one sentence (the limit)")
            runs[-1][1].extend(chunk.audio)
        elif (streaming and SynthesizeStopped.is_type(event.type)) or (not streaming and AudioStop.is_type(event.type)):
            return runs


def _convert(runs: AudioRuns) -> bytes:
    """Blocking: the runs as 16 kHz mono s16le, each run resampled whole (chunk by chunk
    would click); ``ValueError`` if a run is not whole frames."""
    return b"".join(
        to_engine_pcm(bytes(pcm), rate=rate, width=width, channels=channels) for (rate, width, channels), pcm in runs
    )
