"""What the user's speech over a paused reply was, sans-I/O: noise, a backchannel, or words.

Under ``turn_detection.interruption`` ``pause_and_decide``, speech over a reply pauses it at
once; :class:`OverlapDecision` then follows that stretch of speech to a :class:`Verdict`:

- each pause in the speech (and its end) asks for a transcript of the audio so far
  (:meth:`OverlapDecision.on_pause`); a transcript that comes back while the user is speaking
  again, or that is older than the latest request, is ignored (the user went on: wait for the
  next pause);
- a transcript of the audio up to a pause decides (:func:`classify`): at least ``min_words``
  words that are not backchannels interrupt the reply; no words (a cough, a door, the reply's
  own echo), only backchannels ("mm-hm", "yeah") or fewer other words resume it. A transcript
  with more words than the speech could hold (over ``2 + WORDS_PER_S`` a second of voiced
  speech) is Whisper looping: one phrase said over and over counts once ("And so my fellow
  Americans. And so my fellow Americans. And so", "Wait... wait... wait..."), but a loop of one
  of the words it makes of sounds (``HALLUCINATED_WORDS``: "And And And And ...", for a hummed
  "mm-hm" of 0.6 s), or an excess that is no loop, is its hallucination on a sound: noise. A loop
  of one of those words is noise at any length ("And, and, and, and, and," fits 0.6 s);
- at the deadline without a verdict, the reply is interrupted: the user is still talking, or
  the transcript is late, and the reply stays stopped, as under ``immediate``. The deadline is
  ``interrupt_decision_ms`` after the pause, moved to ``interrupt_decision_ms`` after each
  transcript asked for: the verdict comes at most that long after the speech last paused (or,
  for speech that does not pause at all, after the reply did).

No awaits and no clock of its own: the session feeds it times and transcripts.
"""

from __future__ import annotations

import enum
import math
import re

import attrs

#: Faster than anyone speaks (fast speech is 3-4 words a second).
WORDS_PER_S = 5.0
#: What Whisper makes of a sound that is not speech, when it loops on one word.
HALLUCINATED_WORDS = frozenset({"and", "you", "so", "the", "a", "i", "thank", "thanks"})


class Overlap(enum.Enum):
    NOISE = "noise"  # no words at all
    BACKCHANNEL = "backchannel"  # only backchannel phrases
    TOO_FEW_WORDS = "too_few_words"  # other words, fewer than min_words
    WORDS = "words"  # enough other words: a real interruption


_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")  # "[BLANK_AUDIO]", "(coughs)", "*cough*"
_NOT_LETTER = re.compile(r"[^a-z']+")
_REPEATS = re.compile(r"([a-z])\1+")


def words(text: str) -> list[str]:
    """``text`` as comparable words: lower case, annotations and punctuation dropped, hyphens
    split, runs of one letter made single ("Mm-hmm." -> ``["m", "hm"]``, "Mhm" -> ``["mhm"]``)."""
    text = _ANNOTATION.sub(" ", text.lower()).replace("\u2019", "'")
    return [_REPEATS.sub(r"\1", w.strip("'")) for w in _NOT_LETTER.split(text) if w.strip("'")]


def classify(
    transcript: str, *, backchannels: tuple[str, ...] | list[str], min_words: int = 1, speech_ms: float | None = None
) -> Overlap:
    """What ``transcript`` (of speech over a reply, ``speech_ms`` of it voiced, if known) was.
    Backchannel phrases are matched whole, longest first, wherever they are; the words left over
    are the real ones."""
    said = words(transcript)
    if not said:
        return Overlap.NOISE
    phrases = sorted({tuple(words(b)) for b in backchannels if words(b)}, key=len, reverse=True)
    credible = 2 + WORDS_PER_S * speech_ms / 1000 if speech_ms is not None else math.inf
    loop = _loop(said)
    if loop is not None and len(loop) == 1 and loop[0] in HALLUCINATED_WORDS:
        return Overlap.NOISE  # "And, and, and ...": a hum, to Whisper, however many times it says it
    if len(said) > credible:  # Whisper looping, or making words of a sound
        if loop is None or len(loop) > credible:
            return Overlap.NOISE
        said = loop  # words looped: "Okay... Okay... Okay...", "Wait... wait... wait...", "And so my fellow ..."
    rest = _rest(said, phrases)
    if rest == 0:
        return Overlap.BACKCHANNEL
    return Overlap.WORDS if rest >= min_words else Overlap.TOO_FEW_WORDS


def _loop(said: list[str]) -> list[str] | None:
    """The words ``said`` repeats, if it is one phrase said over and over (at least twice; the
    last time may be cut short), else None."""
    for period in range(1, len(said) // 2 + 1):
        if all(said[i] == said[i % period] for i in range(len(said))):
            return said[:period]
    return None


def _rest(said: list[str], phrases: list[tuple[str, ...]]) -> int:
    """How many of ``said`` are not in the backchannel ``phrases``."""
    rest, i = 0, 0
    while i < len(said):
        for phrase in phrases:
            if tuple(said[i : i + len(phrase)]) == phrase:
                i += len(phrase)
                break
        else:
            rest += 1
            i += 1
    return rest


@attrs.frozen
class Verdict:
    """``interrupt``: end the reply (the speech becomes the user's turn); else resume it."""

    interrupt: bool
    overlap: Overlap | None  # None: decided by the deadline, without a transcript
    transcript: str = ""


@attrs.define
class OverlapDecision:
    """One stretch of user speech over a paused reply, from the pause to its :class:`Verdict`."""

    paused_at: float
    deadline: float
    backchannels: tuple[str, ...]
    decision_s: float = 2.0
    min_words: int = 1
    verdict: Verdict | None = None
    _speaking: bool = True
    _asked: int = 0  # transcripts asked for so far; each request's number is its ticket
    _speech_ms: float | None = None  # the voiced length of the speech of the latest request

    @classmethod
    def start(cls, now: float, *, decision_ms: float, backchannels: tuple[str, ...], min_words: int):
        decision_s = decision_ms / 1000
        return cls(now, now + decision_s, backchannels, min_words=min_words, decision_s=decision_s)

    def on_pause(self, now: float, speech_ms: float | None = None) -> int | None:
        """The speech paused (or stopped) at ``now``: returns the ticket of a transcript to make
        of the audio so far, or None (decided, or asked already for this pause). The deadline
        moves to ``decision_ms`` from now."""
        if self.verdict is not None or not self._speaking:
            return None  # decided, or already asked since the user last spoke
        self._speaking = False
        self._asked += 1
        self._speech_ms = speech_ms
        self.deadline = now + self.decision_s
        return self._asked

    def on_speech_resumed(self) -> None:
        """The user speaks again: transcripts asked for before are of a part of the speech."""
        self._speaking = True

    def on_transcript(self, ticket: int, text: str) -> Verdict | None:
        """The transcript of request ``ticket``: the verdict, if it decides one."""
        if self.verdict is not None or self._speaking or ticket != self._asked:
            return None
        overlap = classify(text, backchannels=self.backchannels, min_words=self.min_words, speech_ms=self._speech_ms)
        self.verdict = Verdict(interrupt=overlap is Overlap.WORDS, overlap=overlap, transcript=text)
        return self.verdict

    def on_failure(self, ticket: int) -> Verdict | None:
        """The transcription of request ``ticket`` failed: interrupt (as at the deadline)."""
        if self.verdict is not None or ticket != self._asked:
            return None
        self.verdict = Verdict(interrupt=True, overlap=None)
        return self.verdict

    def on_deadline(self, now: float) -> Verdict | None:
        """Time is up (``now`` >= :attr:`deadline`) with no verdict: interrupt."""
        if self.verdict is not None or now < self.deadline:
            return None
        self.verdict = Verdict(interrupt=True, overlap=None)
        return self.verdict
