"""What the user has heard of one response, sans-I/O.

The audio sender paces the reply to real time plus a small lead, so the server knows, at any
moment, how much of the reply the client has played: a frame sent at ``t`` starts playing when
everything before it has played (or at ``t``, if the client had run dry). Each sentence's span
in the reply audio is recorded, so a playback position gives the words heard up to it; a
sentence heard in part counts its words in proportion.
"""

from __future__ import annotations

import math

import attrs


@attrs.define
class Playback:
    _segments: list[tuple[float, float, float]] = attrs.field(factory=list)  # (wall start, audio ms, ms)
    _sentences: list[tuple[str, float, float]] = attrs.field(factory=list)  # (text, from ms, to ms)
    sent_ms: float = 0.0
    #: Wall-clock time (trio.current_time()) at which all audio sent so far will have played.
    play_end: float = -math.inf

    def add_sentence(self, text: str, duration_ms: float) -> None:
        """Record the next sentence, whose ``duration_ms`` of audio is about to be sent."""
        start = self._sentences[-1][2] if self._sentences else 0.0
        self._sentences.append((text, start, start + duration_ms))

    def on_sent(self, now: float, duration_ms: float) -> None:
        """A frame of ``duration_ms`` was handed to the client at ``now``."""
        start = max(now, self.play_end)
        if self._segments and start == self.play_end:
            wall, audio, length = self._segments[-1]
            self._segments[-1] = (wall, audio, length + duration_ms)
        else:
            self._segments.append((start, self.sent_ms, duration_ms))
        self.sent_ms += duration_ms
        self.play_end = start + duration_ms / 1000

    def played_ms(self, now: float) -> float:
        """Audio the client has played by ``now``."""
        played = 0.0
        for wall, audio, length in self._segments:
            if wall > now:
                break
            played = audio + min(length, (now - wall) * 1000)
        return played

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
