"""Speech-to-text with faster-whisper (CTranslate2), run in a worker thread: the full 30 s window.

:class:`~voiceorch.engines.whisper_windowed.WindowedWhisperSTT` is the faster engine with smaller
units of cancellable work; this one is faster-whisper's ``transcribe`` as it is.
"""

from __future__ import annotations

import itertools
from functools import partial
from os import PathLike

import attrs
import trio
from faster_whisper import WhisperModel

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError, SpeechToText
from .pcm import pcm_to_float
from .whisper_windowed import UnitHook, WorkCancelled, WorkUnits, check_pcm, run_in_units


@attrs.define(kw_only=True)
class WhisperSTT(SpeechToText):
    """A loaded Whisper model; one object is shared by all sessions of a process.

    Transcriptions run one at a time in a worker thread, under :attr:`limiter`. The unit of work
    that a cancellation waits for is one 30 s segment: an utterance under 30 s is one unit.
    """

    model: WhisperModel
    beam_size: int = 1
    language: str | None = "en"
    #: One inference at a time; a cancelled transcription keeps its slot until its segment in
    #: progress ends. ``limiter.statistics()`` shows who holds it and who waits.
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    #: Called in the worker thread before each unit of work (tests, the bench); None: nothing.
    on_unit: UnitHook | None = None
    _calls: itertools.count = attrs.field(factory=itertools.count, init=False)

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

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        ``prompt``: the text already transcribed before this audio (faster-whisper's
        ``initial_prompt``), or None. Cancellation returns at once; the thread stops before its
        next 30 s segment and only then frees the limiter.
        """
        check_pcm(pcm)
        if not pcm:
            return ""
        units = WorkUnits(next(self._calls), self.on_unit)
        return await run_in_units(partial(self._transcribe_sync, pcm, prompt), self.limiter, units)

    async def warm_up(self) -> None:
        """Transcribe one second of silence, so the first real utterance is not slowed down."""
        await self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH))

    async def aclose(self) -> None:
        """Wait until no transcription runs in a worker thread (one a cancelled call left running
        goes on to the end of its unit of work): a process that exits while CTranslate2 is inside
        a call crashes (SIGSEGV, SIGABRT). Cancellable; the caller bounds it."""
        async with self.limiter:
            pass

    def _transcribe_sync(self, pcm: bytes, prompt: str | None = None, units: WorkUnits | None = None) -> str:
        units = units or WorkUnits(next(self._calls), self.on_unit)
        audio = pcm_to_float(pcm)
        try:
            segments, _info = self.model.transcribe(
                audio,
                language=self.language,
                beam_size=self.beam_size,
                vad_filter=False,
                condition_on_previous_text=False,
                initial_prompt=prompt.strip() if prompt and prompt.strip() else None,
            )
            # The segments generator does the decoding: consume it here, in the thread.
            texts = []
            while True:
                units.unit("segment")
                segment = next(segments, None)
                if segment is None:
                    break
                texts.append(segment.text.strip())
        except WorkCancelled:
            raise
        except Exception as exc:
            raise EngineError("stt_failed", f"transcription failed: {exc!r}") from exc
        return " ".join(text for text in texts if text)
