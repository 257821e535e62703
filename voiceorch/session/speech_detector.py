"""Server-side speech detection as a sans-I/O state machine.

Feed it the session's input audio as it arrives; it cuts the audio into VAD chunks (32 ms),
asks the voice-activity stream for each chunk's speech probability, and returns the decisions
it reached: :class:`SpeechStarted` once ``min_speech_ms`` of speech has been heard (dated at
the start of that speech), :class:`SpeechStopped` once ``silence_ms`` of silence has followed
(dated at the start of that silence). Between the two it counts the current speech length, so
the session can ask for a longer stretch of speech before it interrupts the assistant.

Inside the silence window it also reports :class:`PauseStarted` once ``pause_ms`` of silence
has passed (the turn may be ending: time to start work on it speculatively) and
:class:`SpeechResumed` if speech comes back before the window closes.

A chunk is speech at ``probability >= threshold`` and silence below ``threshold - 0.15``
(Silero's hysteresis; at least half the threshold); in between it continues the current state.
"""

from __future__ import annotations

import attrs

from ..engines.base import VAD_CHUNK_SAMPLES, VoiceActivityStream

CHUNK_BYTES = VAD_CHUNK_SAMPLES * 2
CHUNK_MS = VAD_CHUNK_SAMPLES / 16  # 32.0


@attrs.frozen
class SpeechStarted:
    audio_ms: float


@attrs.frozen
class SpeechStopped:
    audio_ms: float


@attrs.frozen
class PauseStarted:
    audio_ms: float


@attrs.frozen
class SpeechResumed:
    audio_ms: float


Decision = SpeechStarted | SpeechStopped | PauseStarted | SpeechResumed


@attrs.define
class SpeechDetector:
    stream: VoiceActivityStream
    threshold: float = 0.5
    min_speech_ms: float = 150
    silence_ms: float = 500
    pause_ms: float | None = None  # None: no PauseStarted / SpeechResumed
    _pending: bytearray = attrs.field(factory=bytearray)
    _fed_ms: float = 0.0  # audio judged so far
    _in_speech: bool = False
    _run_start: float | None = None  # start of the current stretch of speech (or of silence)
    _speech_start: float = 0.0
    _voiced_until: float = 0.0  # end of the last chunk judged speech
    _paused: bool = False  # PauseStarted was reported for the current silence

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def fed_ms(self) -> float:
        """Audio judged so far (whole chunks), in ms since the detector started."""
        return self._fed_ms

    @property
    def quiet_ms(self) -> float | None:
        """Silence heard since the current utterance's last speech (None outside speech, or
        while the user is speaking)."""
        if not self._in_speech or self._run_start is None:
            return None
        return self._fed_ms - self._run_start

    @property
    def speech_ms(self) -> float:
        """Voiced length of the current utterance so far, pauses included but not the silence
        after its last speech (0 outside speech)."""
        return self._voiced_until - self._speech_start if self._in_speech else 0.0

    def feed(self, pcm: bytes) -> list[Decision]:
        """Judge ``pcm`` with the stream, chunk by chunk, on the caller's thread: the same as
        :meth:`chunks` followed by :meth:`feed_probability` for each chunk."""
        decisions: list[Decision] = []
        for chunk in self.chunks(pcm):
            decision = self.feed_probability(self.stream.probability(chunk))
            if decision is not None:
                decisions.append(decision)
        return decisions

    def chunks(self, pcm: bytes) -> list[bytes]:
        """Add ``pcm`` and take the whole VAD chunks it completes (a partial chunk waits for
        the next call). Their probabilities, computed elsewhere (e.g. in a batch, off the
        event loop), go to :meth:`feed_probability` in order."""
        self._pending += pcm
        whole = len(self._pending) - len(self._pending) % CHUNK_BYTES
        if not whole:
            return []
        with memoryview(self._pending) as view:  # each chunk copied once, straight into its bytes
            taken = [bytes(view[offset : offset + CHUNK_BYTES]) for offset in range(0, whole, CHUNK_BYTES)]
        del self._pending[:whole]
        return taken

    def feed_probability(self, probability: float) -> Decision | None:
        """Judge the next chunk, given its speech probability."""
        return self._judge(probability)

    def assume_silence(self) -> SpeechStopped | None:
        """The audio stopped arriving inside a pause and the rest of the silence window went by
        (by the wall clock): end the utterance as if that silence had been heard. Returns the
        :class:`SpeechStopped` (dated at the start of the silence), or None outside a pause."""
        quiet_since = self._run_start
        if not self._in_speech or quiet_since is None:
            return None
        self._in_speech, self._run_start, self._paused = False, None, False
        return SpeechStopped(quiet_since)

    def _judge(self, probability: float) -> Decision | None:
        start, self._fed_ms = self._fed_ms, self._fed_ms + CHUNK_MS
        speech = probability >= self.threshold
        silence = probability < max(self.threshold - 0.15, self.threshold / 2)
        if speech:
            self._voiced_until = self._fed_ms
        if not self._in_speech:
            if speech:
                if self._run_start is None:
                    self._run_start = start
                if self._fed_ms - self._run_start >= self.min_speech_ms:
                    self._in_speech, self._speech_start, self._run_start = True, self._run_start, None
                    return SpeechStarted(self._speech_start)
            elif silence:
                self._run_start = None
        else:
            if silence:
                if self._run_start is None:
                    self._run_start = start
                quiet = self._fed_ms - self._run_start
                if quiet >= self.silence_ms:
                    stopped, self._in_speech, self._run_start, self._paused = self._run_start, False, None, False
                    return SpeechStopped(stopped)
                if self.pause_ms is not None and quiet >= self.pause_ms and not self._paused:
                    self._paused = True
                    return PauseStarted(self._run_start)
            elif speech:
                self._run_start = None
                if self._paused:
                    self._paused = False
                    return SpeechResumed(start)
        return None
