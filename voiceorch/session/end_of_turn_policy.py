"""When does a pause end the turn? Semantic end-of-turn policy (sans-I/O: no awaits, no clock).

The caller (the session's turn-taking state machine) tells the policy how long the current
silence has lasted, the latest verdict of the end-of-turn model (probability the turn is complete,
judged on the audio up to some silence length), and optionally the transcript so far; the policy
answers with one :class:`Step`: end the turn now, ask for a (new) judgement now, or wait until a
given silence length and ask again.

- the audio is first judged at :attr:`judge_after_ms` of silence (160 ms), whenever the caller
  noticed the pause (its speculative answer may have started earlier);
- complete (probability >= :attr:`threshold`, transcript not plainly unfinished) -> end once the
  silence reaches :attr:`complete_silence_ms` (~200 ms);
- incomplete -> keep listening; judge again every :attr:`rejudge_every_ms` of silence; end at the
  eagerness cap (:attr:`cap_ms`, 1-3 s) whatever the verdict;
- a transcript whose last word cannot end an English sentence ("the", "to", "for", "and", ...)
  counts as incomplete whatever the audio model says;
- so does a transcript the text end-of-turn model (:mod:`voiceorch.engines.text_end_of_turn`)
  scores below :attr:`text_threshold` (the probability that its words are a finished sentence),
  when the caller has that score.
"""

from __future__ import annotations

import re

import attrs

#: Words after which an English sentence is plainly unfinished (articles, prepositions, conjunctions,
#: possessives, "is"). Kept short: a false "unfinished" only waits until the cap, but it does wait.
UNFINISHED_LAST_WORDS = frozenset(
    """a an the to for of in on at by with from into about than near between and or but because if my your
    his her our their its is""".split()
)
EAGERNESS_CAP_MS = {"high": 1000, "medium": 2000, "auto": 2000, "low": 3000}


def transcript_unfinished(text: str | None) -> bool:
    """True when ``text`` ends in a word that cannot end a sentence, or in Whisper's "..."."""
    if not text:
        return False
    stripped = text.strip()
    if stripped.endswith(("...", "…", ",", "-")):
        return True
    found = re.findall(r"[a-z']+", stripped.lower())
    return bool(found) and found[-1] in UNFINISHED_LAST_WORDS


@attrs.frozen
class Step:
    """What to do now: ``action`` is ``"end"``, ``"judge"`` or ``"wait"`` (until ``until_ms`` of silence)."""

    action: str
    until_ms: int | None = None
    reason: str = ""


@attrs.frozen(kw_only=True)
class SemanticPolicy:
    """End-of-turn decisions from the silence length, the model's verdict and the transcript."""

    threshold: float = 0.5
    #: Below this text probability (when given) the words are unfinished: chosen by
    #: ``python -m bench.turn_eval`` (finished sentences score 0.1-0.9, cut ones 0.00-0.05).
    text_threshold: float = 0.05
    #: The first judgement of the audio: the model hears the speech's end and this much silence.
    judge_after_ms: int = 160
    complete_silence_ms: int = 200
    cap_ms: int = 2000
    rejudge_every_ms: int = 400
    use_transcript: bool = True
    use_model: bool = True

    @classmethod
    def for_eagerness(cls, eagerness: str, **overrides) -> SemanticPolicy:
        """The policy of an OpenAI-style ``eagerness`` ("low" | "medium" | "high" | "auto")."""
        return cls(cap_ms=EAGERNESS_CAP_MS[eagerness], **overrides)

    def complete(
        self, probability: float | None, transcript: str | None = None, text_probability: float | None = None
    ) -> bool:
        """Whether the verdict (and the transcript and its text score, when used) says the turn is finished."""
        if self.use_transcript and transcript_unfinished(transcript):
            return False
        if self.use_transcript and text_probability is not None and text_probability < self.text_threshold:
            return False
        if not self.use_model:
            return True
        return probability is not None and probability >= self.threshold

    def step(
        self,
        silence_ms: int,
        probability: float | None = None,
        judged_at_ms: int | None = None,
        transcript: str | None = None,
        text_probability: float | None = None,
    ) -> Step:
        """The decision at ``silence_ms`` into the pause, given the last verdict (made at ``judged_at_ms``).

        ``"judge"`` asks the caller to judge the audio so far (and transcribe it, when the
        transcript is used) and call again with the result. The audio is first judged at
        :attr:`judge_after_ms` of silence; the turn does not end before :attr:`complete_silence_ms`.
        """
        if silence_ms >= self.cap_ms:
            return Step("end", reason="cap")
        if judged_at_ms is None and self.use_model:
            return Step("judge") if silence_ms >= self.judge_after_ms else Step("wait", self.judge_after_ms)
        if silence_ms < self.complete_silence_ms:
            return Step("wait", self.complete_silence_ms)
        if judged_at_ms is None or (self.use_model and silence_ms - judged_at_ms >= self.rejudge_every_ms):
            return Step("judge")
        if self.complete(probability, transcript, text_probability):
            return Step("end", reason="complete")
        next_judge = judged_at_ms + self.rejudge_every_ms if self.use_model else self.cap_ms
        return Step("wait", min(next_judge, self.cap_ms), reason="incomplete")


@attrs.frozen(kw_only=True)
class FixedSilencePolicy:
    """Plain server VAD: the turn ends after ``silence_ms`` of silence (the same interface)."""

    silence_ms: int = 500

    def step(
        self, silence_ms: int, probability=None, judged_at_ms=None, transcript=None, text_probability=None
    ) -> Step:
        if silence_ms >= self.silence_ms:
            return Step("end", reason="silence")
        return Step("wait", self.silence_ms)
