"""Text-to-speech with Piper (ONNX), run in a worker thread and resampled to 16 kHz with soxr."""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from os import PathLike
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import onnxruntime
import outcome
import soxr
import trio
from piper import PiperConfig, PiperVoice, SynthesisConfig

from .base import SAMPLE_RATE, EngineError, TextToSpeech
from .pcm import float_to_pcm

#: onnxruntime intra-op threads of a synthesis. One: the first sentence is synthesised while the
#: LLM still generates the next on the other core, and there one thread took 309 ms against 423
#: with two (p50, quiet machine; ``python -m bench.thread_eval``, bench/baselines/thread_eval.md).
PIPER_THREADS = 1


@attrs.define(kw_only=True)
class PiperTTS(TextToSpeech):
    """A loaded Piper voice; one object is shared by all sessions of a process.

    Syntheses run one at a time in a worker thread, under :attr:`limiter`. A cancelled
    synthesis is stopped inside onnxruntime (``RunOptions.terminate``), so it frees the
    limiter for the next session within one model step rather than after the whole sentence.
    """

    voice: PiperVoice
    syn_config: SynthesisConfig = attrs.field(factory=SynthesisConfig)
    #: One synthesis at a time; held until the synthesis's thread has really ended (a
    #: cancelled one ends within a model step). ``limiter.statistics()`` shows who holds it
    #: and who waits.
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    #: Syntheses stopped inside onnxruntime because their caller was cancelled.
    terminated: int = 0

    @classmethod
    def load(
        cls, model_path: str | PathLike[str], *, length_scale: float | None = None, threads: int = PIPER_THREADS
    ) -> PiperTTS:
        """Load the voice (``model_path`` with its ``.json`` beside it) with ``threads`` onnxruntime
        intra-op threads; blocking, call it once."""
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # As PiperVoice.load builds it, but with these options (it has no argument for them).
        voice = PiperVoice(
            session=onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            ),
            config=PiperConfig.from_dict(json.loads(Path(f"{model_path}.json").read_text(encoding="utf-8"))),
        )
        return cls(voice=voice, syn_config=SynthesisConfig(length_scale=length_scale))

    async def synthesize(self, text: str) -> bytes:
        """Speak ``text`` (one sentence or clause); returns 16 kHz mono s16le PCM.

        Empty or blank text gives ``b""``. On cancellation the synthesis is told to stop
        (onnxruntime's ``terminate``, checked between the model's nodes, and between Piper's
        sentences) and this call waits for its thread to end, so when it raises ``Cancelled``
        the limiter is free again. Raises :class:`EngineError` ``tts_failed`` if Piper fails.
        """
        if not text.strip():
            return b""
        run_options = onnxruntime.RunOptions()
        async with self.limiter:  # the wait for it is cancellable
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_terminate_on_cancel, run_options)
                with trio.CancelScope(shield=True):  # the thread is stopped by terminate, not abandoned
                    result = await trio.to_thread.run_sync(
                        partial(outcome.capture, self._synthesize_sync, text, run_options)
                    )
                nursery.cancel_scope.cancel()
        pcm = result.unwrap()
        if pcm is None:  # stopped by terminate: our caller was cancelled, and this raises it
            self.terminated += 1
            await trio.lowlevel.checkpoint()
            raise AssertionError("a synthesis was terminated without a cancellation")  # pragma: no cover
        return pcm

    def _synthesize_sync(self, text: str, run_options: onnxruntime.RunOptions) -> bytes | None:
        """Blocking; ``None`` if ``run_options.terminate`` stopped it."""
        voice = dataclasses.replace(self.voice, session=_Terminable(self.voice.session, run_options))
        chunks = []
        try:
            for chunk in voice.synthesize(text, self.syn_config):
                if run_options.terminate:
                    return None
                chunks.append(chunk)
            if not chunks:
                return b""
            audio = np.concatenate([chunk.audio_float_array for chunk in chunks])
            audio = soxr.resample(audio.astype(np.float32), chunks[0].sample_rate, SAMPLE_RATE)
        except Exception as exc:
            if run_options.terminate:
                return None
            raise EngineError("tts_failed", f"speech synthesis failed: {exc!r}") from exc
        return float_to_pcm(audio)

    async def warm_up(self) -> None:
        """Synthesize one short sentence, so the first real one is not slowed down."""
        await self.synthesize("Hello.")


async def _terminate_on_cancel(run_options: onnxruntime.RunOptions) -> None:
    """Wait until cancelled (by the caller of :meth:`PiperTTS.synthesize`, or by it once the
    thread is done), then tell the synthesis to stop. Its ``Cancelled`` ends here, so the
    nursery raises no exception group; the caller's cancellation is raised by its own task."""
    try:
        await trio.sleep_forever()
    except trio.Cancelled:
        run_options.terminate = True


@attrs.frozen
class _Terminable:
    """Piper's ONNX session, with every run under ``run_options`` (so it can be terminated)."""

    session: onnxruntime.InferenceSession
    run_options: onnxruntime.RunOptions

    def run(self, output_names: Any, input_feed: dict[str, Any]) -> list[Any]:
        return self.session.run(output_names, input_feed, self.run_options)
