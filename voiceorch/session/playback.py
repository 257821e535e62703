"""What the user has heard of one response, sans-I/O.

The audio sender paces the reply to real time plus a small lead, so the server knows, at any
moment, how much of the reply the client has played: a frame sent at ``t`` starts playing when
everything before it has played (or at ``t``, if the client had run dry). Each sentence's span
in the reply audio is recorded, so a playback position gives the words heard up to it; a
sentence heard in part counts its words in proportion.

Positions are in the reply's own audio (ms from its start). A paused reply (:meth:`stop`) may
go on from an earlier position (:meth:`rewind`): the frames sent after it play that audio again.

**Where a paused reply resumes** (:func:`resume_point`). Piper speaks one sentence at a time
and gives no word timings, so the only boundaries known exactly are the sentences' starts. A
whole sentence is a lot to hear again after an "mm-hm", so the reply resumes at the start of
the word the user was hearing: the word in progress is found by character share (a word's
audio is about as long as its letters' share of the sentence: a better estimate than the
word count, as "a" and "understanding" show), and the restart is moved to the quietest 10 ms
within ``SNAP_BEFORE_MS`` before to ``SNAP_AFTER_MS`` after that estimate (of as quiet ones,
the nearest), never past what was played: the gap between two words, or a closure before a
consonant, never the middle of a vowel. The first word of a sentence restarts at the sentence's exact start.
"""

from __future__ import annotations

import math

import attrs
import numpy as np

#: How far before / after the estimated start of a word its restart may be moved to silence.
SNAP_BEFORE_MS = 120.0
SNAP_AFTER_MS = 80.0
_WINDOW_MS = 10.0
_BYTES_PER_MS = 32  # wire-format PCM: 16 kHz, 16-bit mono


@attrs.define
class Playback:
    _segments: list[tuple[float, float, float]] = attrs.field(factory=list)  # (wall start, audio ms, ms)
    _sentences: list[tuple[str, float, float]] = attrs.field(factory=list)  # (text, from ms, to ms)
    #: All reply audio handed to the client (audio sent again after a resume counts again).
    sent_ms: float = 0.0
    #: Where in the reply's audio the next frame starts (the furthest sent, unless rewound).
    position_ms: float = 0.0
    #: Wall-clock time (trio.current_time()) at which all audio sent so far will have played.
    play_end: float = -math.inf

    @property
    def audio_ms(self) -> float:
        """The reply's audio known so far (every sentence added)."""
        return self._sentences[-1][2] if self._sentences else 0.0

    def add_sentence(self, text: str, duration_ms: float) -> None:
        """Record the next sentence, whose ``duration_ms`` of audio is about to be sent."""
        start = self.audio_ms
        self._sentences.append((text, start, start + duration_ms))

    def on_sent(self, now: float, duration_ms: float) -> None:
        """A frame of ``duration_ms`` (the audio at :attr:`position_ms`) was handed to the
        client at ``now``."""
        start = max(now, self.play_end)
        if self._segments and start == self.play_end and sum(self._segments[-1][1:]) == self.position_ms:
            wall, audio, length = self._segments[-1]
            self._segments[-1] = (wall, audio, length + duration_ms)
        else:
            self._segments.append((start, self.position_ms, duration_ms))
        self.sent_ms += duration_ms
        self.position_ms += duration_ms
        self.play_end = start + duration_ms / 1000

    def played_ms(self, now: float) -> float:
        """Where in the reply's audio the client's playback is at ``now``."""
        played = 0.0
        for wall, audio, length in self._segments:
            if wall > now:
                break
            played = audio + min(length, (now - wall) * 1000)
        return played

    def stop(self, now: float) -> float:
        """The client stopped playing at ``now`` and dropped what it had queued: returns the
        position it reached, from which the next frame would go on (see :meth:`rewind`)."""
        played = self.played_ms(now)
        kept = []
        for wall, audio, length in self._segments:
            if wall > now:
                break
            kept.append((wall, audio, min(length, (now - wall) * 1000)))
        self._segments = kept
        self.position_ms = played
        self.play_end = now
        return played

    def rewind(self, position_ms: float) -> None:
        """The next frame sent is the reply's audio from ``position_ms``."""
        self.position_ms = min(position_ms, self.audio_ms)

    @property
    def sentence_count(self) -> int:
        """Sentences recorded so far (a mark for :meth:`heard_text`'s ``first``)."""
        return len(self._sentences)

    def heard_text(self, played_ms: float, first: int = 0, last: int | None = None) -> str:
        """The words of the reply that ``played_ms`` of its audio carried (of sentences
        ``first`` to ``last``, not included, only: the part of one step of a reply)."""
        words: list[str] = []
        for text, start, end in self._sentences[first:last]:
            if end <= played_ms:
                words.append(text)
            else:
                if start < played_ms:
                    parts = text.split()
                    count = math.floor(len(parts) * (played_ms - start) / (end - start))
                    words.extend(parts[:count])
                break
        return " ".join(words)

    def resume_point(self, played_ms: float, audio: bytes) -> tuple[float, str]:
        """Where to go on after a pause at ``played_ms``: the start of the word the user was
        hearing (module docstring), and the reply's text before it. ``audio`` is the reply's
        audio so far (wire-format PCM)."""
        before: list[str] = []
        for text, start, end in self._sentences:
            if end <= played_ms:
                before.append(text)
                continue
            if played_ms <= start:
                return start, " ".join(before)
            parts = text.split()
            total = sum(len(w) for w in parts) or 1
            share = (end - start) / total
            at, k, letters = start, 0, 0
            for i, word in enumerate(parts):  # the word whose share of the audio holds played_ms
                if start + share * (letters + len(word)) > played_ms:
                    k, at = i, start + share * letters
                    break
                letters += len(word)
            if k == 0:
                return start, " ".join(before)
            restart = _quietest(audio, max(start, at - SNAP_BEFORE_MS), min(played_ms, at + SNAP_AFTER_MS), at)
            return restart, " ".join([*before, *parts[:k]])
        return self.audio_ms, " ".join(before)  # all of it was played: go on with what comes next


def _quietest(audio: bytes, from_ms: float, to_ms: float, near_ms: float) -> float:
    """The start of the quietest ``_WINDOW_MS`` of ``audio`` starting in [from_ms, to_ms]
    (``from_ms`` if the range is empty or beyond the audio); of windows about as quiet (two
    gaps between words), the one nearest ``near_ms``."""
    window = int(_WINDOW_MS * 16)
    first, last = int(from_ms * 16), int(to_ms * 16)
    samples = np.frombuffer(audio[: (last + window) * 2], dtype="<i2").astype(np.float32)
    if last <= first or len(samples) < first + window:
        return from_ms
    step = 32  # 2 ms
    starts = range(first, min(last, len(samples) - window) + 1, step)
    energy = np.array([float(np.mean(samples[s : s + window] ** 2)) for s in starts])
    quiet = energy <= energy.min() + 0.05 * (np.median(energy) - energy.min()) + 1.0
    candidates = [start for start, ok in zip(starts, quiet) if ok]
    return min(candidates, key=lambda start: abs(start / 16 - near_ms)) / 16
