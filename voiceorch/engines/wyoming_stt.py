"""Speech-to-text from a Wyoming server (wyoming-faster-whisper and the like), over Trio."""

from __future__ import annotations

import attrs
import trio
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.info import Info

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError, SpeechToText
from .remote_errors import MAX_TRANSCRIPT_BYTES, remote_call, warm_up_or_warn
from .wyoming_client import (
    WyomingAddress,
    WyomingClosed,
    WyomingConnection,
    WyomingProtocolError,
    describe,
    open_wyoming,
)

#: Audio goes out in chunks of this many bytes (100 ms at 16 kHz).
CHUNK_BYTES = SAMPLE_RATE * SAMPLE_WIDTH // 10


@attrs.define(kw_only=True)
class WyomingSTT(SpeechToText):
    """Transcribes over the Wyoming protocol, one connection per utterance.

    Each call connects, sends ``transcribe``, ``audio-start``, the audio as ``audio-chunk``
    events and ``audio-stop``, and waits for the ``transcript``. A server that streams its
    transcript (``transcript-start``, ``transcript-chunk``..., ``transcript-stop``) is read
    the same way; its final ``transcript`` wins, and without one the chunks are joined. A
    transcript (or the chunks so far) over :data:`MAX_TRANSCRIPT_BYTES` is ``stt_failed``.
    """

    address: WyomingAddress
    language: str | None = "en"
    #: The server's model to use (``transcribe``'s ``name``); None lets the server choose.
    model: str | None = None
    connect_timeout: float = 2.0
    #: Bound on one whole transcription, connecting included (``stt_timeout`` after it).
    timeout: float = 15.0
    #: Our requests in flight to this server at once; more wait here (cancellable).
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(4))

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped,
        with runs of white space made one space. ``prompt`` is ignored (Wyoming's ``transcribe``
        event carries none).

        Cancellation closes the connection at once, so the server sees the client go. Raises
        :class:`EngineError` ``stt_unavailable``, ``stt_timeout`` or ``stt_failed``.
        """
        if len(pcm) % SAMPLE_WIDTH:
            raise EngineError("stt_failed", "PCM length is not a whole number of 16-bit samples")
        if not pcm:
            return ""
        audio_format = {"rate": SAMPLE_RATE, "width": SAMPLE_WIDTH, "channels": 1}
        events = [
            Transcribe(name=self.model, language=self.language).event(),
            AudioStart(**audio_format).event(),
            *(
                AudioChunk(audio=pcm[offset : offset + CHUNK_BYTES], **audio_format).event()
                for offset in range(0, len(pcm), CHUNK_BYTES)
            ),
            AudioStop().event(),
        ]
        async with self.limiter:
            with remote_call("stt", f"Wyoming STT server {self.address}", self.timeout):
                async with open_wyoming(self.address, connect_timeout=self.connect_timeout) as conn:
                    await conn.send(*events)
                    return await _read_transcript(conn)

    async def describe(self) -> Info:
        """Ask the server what it offers (``describe`` → ``info``); not queued behind
        :attr:`limiter`, so a health check answers while transcriptions run."""
        with remote_call("stt", f"Wyoming STT server {self.address}", self.timeout):
            async with open_wyoming(self.address, connect_timeout=self.connect_timeout) as conn:
                return await describe(conn)

    async def check_ready(self) -> str | None:
        """``None`` if the server answers ``describe`` with a speech-to-text program, else why not."""
        try:
            info = await self.describe()
        except EngineError as exc:
            return exc.message
        if not any(program.installed for program in info.asr):
            return f"Wyoming server {self.address} offers no speech-to-text"
        return None

    async def warm_up(self) -> None:
        """Check the server offers speech-to-text, then transcribe one second of silence (a
        server that loads its model on first use, as wyoming-faster-whisper does, loads it now).
        A failure is logged as a warning, not raised (see :func:`warm_up_or_warn`)."""
        await warm_up_or_warn("stt", str(self.address), self._warm_up)

    async def _warm_up(self) -> None:
        reason = await self.check_ready()
        if reason is not None:
            raise EngineError("stt_unavailable", reason)
        await self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH))


async def _read_transcript(conn: WyomingConnection) -> str:
    chunks: list[str] = []
    size = 0  # UTF-8 bytes of the chunks
    streamed = stopped = False
    while True:
        try:
            event = await conn.receive()
        except WyomingClosed:
            if stopped:
                return _tidy("".join(chunks))  # a streamed transcript, then the server hung up
            raise
        text = event.data.get("text")
        if Transcript.is_type(event.type) or (streamed and TranscriptChunk.is_type(event.type)):
            if not isinstance(text, str):
                raise WyomingProtocolError(f"{event.type} event without a text string")
            length = len(text.encode("utf-8", errors="replace"))
            if length + (0 if Transcript.is_type(event.type) else size) > MAX_TRANSCRIPT_BYTES:
                raise WyomingProtocolError(f"a transcript over the {MAX_TRANSCRIPT_BYTES}-byte limit")
            if Transcript.is_type(event.type):
                return _tidy(text)
            chunks.append(text)
            size += length
        elif TranscriptStart.is_type(event.type):
            streamed, chunks, size = True, [], 0
        elif TranscriptStop.is_type(event.type) and streamed:
            stopped = True


def _tidy(text: str) -> str:
    """Whitespace runs to one space (servers join segments with their own spacing)."""
    return " ".join(text.split())
