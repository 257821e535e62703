"""Speech-to-text with faster-whisper (CTranslate2), run in a worker thread."""

from __future__ import annotations

from functools import partial
from os import PathLike

import attrs
import trio
from faster_whisper import WhisperModel

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError, SpeechToText
from .pcm import pcm_to_float


@attrs.define(kw_only=True)
class WhisperSTT(SpeechToText):
    """A loaded Whisper model; one object is shared by all sessions of a process.

    Transcriptions run one at a time in a worker thread, under :attr:`limiter`.
    """

    model: WhisperModel
    beam_size: int = 1
    language: str | None = "en"
    #: One inference at a time; an abandoned (cancelled) transcription keeps its slot until
    #: its thread really ends. ``limiter.statistics()`` shows who holds it and who waits.
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    @classmethod
    def load(
        cls,
        model_dir: str | PathLike[str],
        *,
        compute_type: str = "int8",
        cpu_threads: int = 2,
        beam_size: int = 1,
        language: str | None = "en",
    ) -> WhisperSTT:
        """Load the CTranslate2 model from ``model_dir`` (blocking; call it once at start-up)."""
        model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)
        return cls(model=model, beam_size=beam_size, language=language)

    async def transcribe(self, pcm: bytes) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        Cancellation returns at once; the abandoned thread finishes the transcription in the
        background and only then frees the limiter for the next call.
        """
        if len(pcm) % SAMPLE_WIDTH:
            raise EngineError("stt_failed", "PCM length is not a whole number of 16-bit samples")
        if not pcm:
            return ""
        return await trio.to_thread.run_sync(
            partial(self._transcribe_sync, pcm), abandon_on_cancel=True, limiter=self.limiter
        )

    async def warm_up(self) -> None:
        """Transcribe one second of silence, so the first real utterance is not slowed down."""
        await self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH))

    def _transcribe_sync(self, pcm: bytes) -> str:
        audio = pcm_to_float(pcm)
        try:
            segments, _info = self.model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                vad_filter=False,
                condition_on_previous_text=False,
            )
            # The segments generator does the decoding: consume it here, in the thread.
            texts = [segment.text.strip() for segment in segments]
        except Exception as exc:
            raise EngineError("stt_failed", f"transcription failed: {exc!r}") from exc
        return " ".join(text for text in texts if text)
