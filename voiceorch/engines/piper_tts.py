"""Text-to-speech with Piper (ONNX), run in a worker thread and resampled to 16 kHz with soxr."""

from __future__ import annotations

from functools import partial
from os import PathLike

import attrs
import numpy as np
import soxr
import trio
from piper import PiperVoice, SynthesisConfig

from .base import SAMPLE_RATE, EngineError


@attrs.define(kw_only=True)
class PiperTTS:
    """A loaded Piper voice; one object is shared by all sessions of a process.

    Syntheses run one at a time in a worker thread, under :attr:`limiter`.
    """

    voice: PiperVoice
    syn_config: SynthesisConfig = attrs.field(factory=SynthesisConfig)
    #: One synthesis at a time; an abandoned (cancelled) synthesis keeps its slot until its
    #: thread really ends. ``limiter.statistics()`` shows who holds it and who waits.
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    @classmethod
    def load(cls, model_path: str | PathLike[str], *, length_scale: float | None = None) -> PiperTTS:
        """Load the voice (``model_path`` with its ``.json`` beside it); blocking, call it once."""
        voice = PiperVoice.load(model_path)
        return cls(voice=voice, syn_config=SynthesisConfig(length_scale=length_scale))

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM.

        Empty or blank text gives ``b""``. Cancellation returns at once; the abandoned thread
        finishes the sentence in the background and only then frees the limiter.
        """
        if not text.strip():
            return b""
        return await trio.to_thread.run_sync(
            partial(self._synthesize_sync, text), abandon_on_cancel=True, limiter=self.limiter
        )

    async def warm_up(self) -> None:
        """Synthesize one short sentence, so the first real one is not slowed down."""
        await self.synthesize("Hello.")

    def _synthesize_sync(self, text: str) -> bytes:
        try:
            chunks = list(self.voice.synthesize(text, self.syn_config))
            if not chunks:
                return b""
            audio = np.concatenate([chunk.audio_float_array for chunk in chunks])
            audio = soxr.resample(audio.astype(np.float32), chunks[0].sample_rate, SAMPLE_RATE)
        except Exception as exc:
            raise EngineError("tts_failed", f"speech synthesis failed: {exc!r}") from exc
        return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
