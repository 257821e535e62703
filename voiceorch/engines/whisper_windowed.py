"""Whisper with the encoder window sized to the utterance, a bounded temperature fallback, a
previous-text prompt, and cancellation between small units of work.

faster-whisper's ``transcribe`` always pads the log-mel to 3000 frames (``pad_or_trim`` in
``generate_segments``; ``chunk_length`` changes how audio is split, not the padded size), so the
encoder pays for 30 s whatever the utterance. CTranslate2's Whisper encoder accepts fewer frames:
this engine computes the features with the model's own ``FeatureExtractor`` (exactly what
``transcribe`` computes), pads them with zeros (as ``pad_or_trim`` does) only to the utterance's
length plus :attr:`WindowedWhisperSTT.margin_s`, rounded up to whole seconds, and decodes one
segment without timestamps. Utterances longer than :attr:`max_window_s` go to the ordinary
``transcribe``.

The tail: faster-whisper retries a failed decode at temperatures 0.2 ... 1.0 (up to six decodes).
Here :attr:`temperatures` defaults to ``(0.0, 0.4)`` — one retry — and every decode is capped at
:attr:`max_tokens_per_s` tokens per second of audio (a repetition loop cannot run to 448 tokens).

The prompt: ``transcribe(pcm, prompt="text heard before")`` puts that text's tokens after
``<|startofprev|>`` ahead of the start-of-transcript sequence, as faster-whisper does with
``initial_prompt`` / the previous window's text (at most the last 223 tokens), so a piece of a
longer utterance is decoded in the context of what came before it.

Cancellation: the work runs in a worker thread as units — feature extraction, the encoder, each
decode (one per temperature); past :attr:`max_window_s`, each 30 s segment of faster-whisper's
``transcribe``. Cancelling :meth:`WindowedWhisperSTT.transcribe` returns at once and sets the
call's flag; the thread checks it before every unit and stops, so the limiter (one inference at a
time, which is what stops two from overlapping on the cores) is held for at most the unit in
progress, not for the whole transcription.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Callable
from functools import partial

import attrs
import numpy as np
import trio
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_compression_ratio, get_ctranslate2_storage

from .base import SAMPLE_RATE, SAMPLE_WIDTH, EngineError, SpeechToText

FRAMES_PER_SECOND = 100  # hop 160 at 16 kHz
#: Whisper's decoder context is 448 tokens; faster-whisper keeps the last 448 // 2 - 1 prompt tokens.
MAX_PROMPT_TOKENS = 223

#: Called in the worker thread before each unit of work: (call number, unit name). For tests and the bench.
UnitHook = Callable[[int, str], None]


class WorkCancelled(Exception):
    """The call was cancelled: the thread stops before its next unit."""


#: CTranslate2 threads of a transcription. One was faster than two on this 2-core machine, alone
#: (p50 72 vs 87 ms over 13 utterances x 3, quiet) and beside a generating LLM (188 vs 210 ms;
#: bench/baselines/thread_eval.md), and it leaves the other core to the LLM and the other sessions.
WHISPER_THREADS = 1


@attrs.define
class WorkUnits:
    """One call's cancellation flag, checked by the worker thread before each unit of work."""

    call: int
    hook: UnitHook | None = None
    cancel: threading.Event = attrs.field(factory=threading.Event)
    #: Units started so far (the unit in progress included).
    started: list[str] = attrs.field(factory=list)

    def unit(self, name: str) -> None:
        """Start unit ``name``; raises :class:`WorkCancelled` if the call was cancelled (in the worker thread)."""
        if self.cancel.is_set():
            raise WorkCancelled
        self.started.append(name)
        if self.hook is not None:
            self.hook(self.call, name)


def check_pcm(pcm: bytes) -> None:
    if len(pcm) % SAMPLE_WIDTH:
        raise EngineError("stt_failed", "PCM length is not a whole number of 16-bit samples")


async def run_in_units(work: Callable[[WorkUnits], str], limiter: trio.CapacityLimiter, units: WorkUnits) -> str:
    """Run ``work(units)`` in a worker thread under ``limiter``; cancellation returns at once and
    stops the thread before its next unit (the limiter is freed when the thread really ends)."""

    def run() -> str:
        try:
            return work(units)
        except WorkCancelled:
            return ""  # nobody waits for it: the Trio side was cancelled

    try:
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=limiter)
    finally:
        units.cancel.set()  # harmless once the thread has ended; stops an abandoned one


@attrs.define(kw_only=True)
class WindowedWhisperSTT(SpeechToText):
    """A loaded Whisper model transcribing short utterances in a window sized to them.

    One transcription at a time in a worker thread, under :attr:`limiter`; a cancelled one stops
    at its next unit of work (see the module's docstring).
    """

    model: WhisperModel
    language: str = "en"
    margin_s: float = 3.0
    min_window_s: float = 2.0
    max_window_s: float = 30.0
    temperatures: tuple[float, ...] = (0.0, 0.4)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    max_tokens_per_s: float = 8.0
    #: Pad the window with silent AUDIO (log-mel floor, as openai-whisper does) rather than
    #: with zero features (faster-whisper's ``pad_or_trim``). Measured worse (repetition loops): off.
    pad_audio: bool = False
    #: Decode with timestamp tokens and drop the text that Whisper places past the end of the audio
    #: (in the window's padding): a short window otherwise invites repeating the utterance.
    timestamps: bool = True
    #: One inference at a time; a cancelled call holds it until its unit in progress ends.
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    #: Called in the worker thread before each unit of work (tests, the bench); None: nothing.
    on_unit: UnitHook | None = None
    _tokenizer: Tokenizer | None = attrs.field(default=None, init=False)
    _calls: itertools.count = attrs.field(factory=itertools.count, init=False)

    @classmethod
    def load(
        cls, model_dir, *, compute_type: str = "int8", cpu_threads: int = WHISPER_THREADS, **options
    ) -> WindowedWhisperSTT:
        """Load the CTranslate2 model (blocking; once at start-up)."""
        model = WhisperModel(str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=cpu_threads)
        return cls(model=model, **options)

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        """Transcribe one utterance of 16 kHz mono s16le PCM; returns the text, stripped.

        ``prompt``: the text already transcribed before this audio (Whisper's previous-text
        prompt), or None. Cancellation returns at once; the thread stops before its next unit of
        work and only then frees the limiter.
        """
        check_pcm(pcm)
        if not pcm:
            return ""
        units = WorkUnits(next(self._calls), self.on_unit)
        return await run_in_units(partial(self._transcribe, pcm, prompt), self.limiter, units)

    async def warm_up(self) -> None:
        """Transcribe one second of silence, so the first real utterance is not slowed down."""
        await self.transcribe(bytes(SAMPLE_RATE * SAMPLE_WIDTH))

    async def aclose(self) -> None:
        """Wait until no transcription runs in a worker thread (one a cancelled call left running
        goes on to the end of its unit of work): a process that exits while CTranslate2 is inside
        a call crashes (SIGSEGV, SIGABRT). Cancellable; the caller bounds it."""
        async with self.limiter:
            pass

    def window_frames(self, samples: int) -> int:
        """Mel frames the encoder gets for an utterance of ``samples`` (whole seconds, even)."""
        seconds = math.ceil(samples / SAMPLE_RATE + self.margin_s)
        return int(min(max(seconds, self.min_window_s), self.max_window_s) * FRAMES_PER_SECOND)

    def transcribe_sync(self, pcm: bytes, prompt: str | None = None) -> str:
        """Blocking form of :meth:`transcribe` (for a worker thread or the bench); not cancellable."""
        check_pcm(pcm)
        return self._transcribe(pcm, prompt, WorkUnits(next(self._calls), self.on_unit)) if pcm else ""

    def _transcribe(self, pcm: bytes, prompt: str | None, units: WorkUnits) -> str:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        prompt = prompt.strip() if prompt else None
        try:
            if audio.size / SAMPLE_RATE + self.margin_s > self.max_window_s:
                return self._long(audio, prompt, units)
            return self._decode_window(audio, prompt, units)
        except WorkCancelled:
            raise
        except Exception as exc:
            raise EngineError("stt_failed", f"transcription failed: {exc!r}") from exc

    def _long(self, audio: np.ndarray, prompt: str | None, units: WorkUnits) -> str:
        """faster-whisper's own 30 s windows, one segment per unit."""
        units.unit("features")
        segments, _ = self.model.transcribe(
            audio,
            language=self.language,
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            temperature=list(self.temperatures),
            initial_prompt=prompt,
        )
        texts = []
        while True:
            units.unit("segment")
            segment = next(segments, None)
            if segment is None:
                return " ".join(texts)
            if segment.text.strip():
                texts.append(segment.text.strip())

    def _decode_window(self, audio: np.ndarray, prompt_text: str | None, units: WorkUnits) -> str:
        model = self.model
        frames = self.window_frames(audio.size)
        if self.pad_audio:
            audio = np.pad(audio, (0, max(0, frames * 160 - audio.size)))
        units.unit("features")
        features = model.feature_extractor(audio)[..., :-1]  # as transcribe(): drop the last frame
        features = np.pad(features[:, :frames], ((0, 0), (0, max(0, frames - features.shape[-1]))))
        units.unit("encode")
        encoder_output = model.model.encode(get_ctranslate2_storage(features[np.newaxis]), to_cpu=False)
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(
                model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=self.language
            )
        tokenizer = self._tokenizer
        start = list(tokenizer.sot_sequence) + ([] if self.timestamps else [tokenizer.no_timestamps])
        previous = []
        if prompt_text:
            previous = [tokenizer.sot_prev] + tokenizer.encode(" " + prompt_text)[-MAX_PROMPT_TOKENS:]
        max_new = int(12 + self.max_tokens_per_s * min(audio.size, frames * 160) / SAMPLE_RATE)
        best: tuple[float, str] | None = None
        for temperature in self.temperatures:
            units.unit(f"generate@{temperature:g}")
            # The earlier text only at temperature 0: a retry goes without it (a prompt can feed a loop).
            prompt = previous + start if temperature == 0 else start
            kwargs = (
                {"beam_size": 1}
                if temperature == 0
                else {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
            )
            result = model.model.generate(
                encoder_output,
                [prompt],
                max_length=len(prompt) + max_new,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=[-1],
                **kwargs,
            )[0]
            tokens = result.sequences_ids[0]
            text = self._text(tokens, audio.size / SAMPLE_RATE)
            avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # length_penalty 1
            if best is None or avg_logprob > best[0]:
                best = (avg_logprob, text)
            if result.no_speech_prob > 0.6 and avg_logprob < self.log_prob_threshold:
                return ""  # silence, as transcribe() skips it
            ratio_ok = get_compression_ratio(text) <= self.compression_ratio_threshold and not repeats(text)
            if ratio_ok and avg_logprob >= self.log_prob_threshold:
                return text
        return best[1] if best else ""

    def _text(self, tokens: list[int], duration_s: float) -> str:
        """The text of ``tokens``; with timestamps, only the segments that start inside the audio,
        and a segment that only repeats the one before it is dropped."""
        tokenizer = self._tokenizer
        if not self.timestamps:
            return tokenizer.decode(tokens).strip()
        segments, current, start = [], [], None
        for token in tokens:
            if token < tokenizer.timestamp_begin:
                current.append(token)
                continue
            time_s = (token - tokenizer.timestamp_begin) * 0.02
            if start is None:
                start = time_s
            else:  # the segment's end
                segments.append((start, current))
                current, start = [], None
        if current:
            segments.append((start, current))
        texts: list[str] = []
        for begin, segment in segments:
            text = tokenizer.decode(segment).strip()
            if text and (begin is None or begin < duration_s) and (not texts or texts[-1] != text):
                texts.append(text)
        return " ".join(texts)


def repeats(text: str, times: int = 3) -> bool:
    """Whether some phrase of two or more words comes ``times`` times in a row (a decoding loop)."""
    found = re.sub(r"[^\w' ]+", " ", text.lower()).split()
    for n in range(2, len(found) // times + 1):
        for i in range(len(found) - n * times + 1):
            if all(found[i : i + n] == found[i + k * n : i + k * n + n] for k in range(1, times)):
                return True
    return False
