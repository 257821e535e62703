"""The semantic end-of-turn policy: pure decisions from silence length, verdict and transcript."""

from __future__ import annotations

import attrs
import pytest

from voiceorch.session.end_of_turn_policy import FixedSilencePolicy, SemanticPolicy, Step, transcript_unfinished


def run(policy, verdicts, transcript=None, limit_ms=5000) -> int | None:
    """Silence (ms, 32 ms steps) at which the policy ends; ``verdicts(silence_ms)`` scripts the model."""
    probability = judged_at = None
    silence = 0
    while silence < limit_ms:
        step = policy.step(silence, probability, judged_at, transcript)
        if step.action == "end":
            return silence
        if step.action == "judge":
            probability, judged_at = verdicts(silence), silence
            continue
        assert step.action == "wait" and step.until_ms > silence
        silence += 32
    return None


def test_a_complete_verdict_ends_after_the_short_silence() -> None:
    assert run(SemanticPolicy(), lambda s: 0.9) == 224


def test_an_incomplete_verdict_waits_and_rejudges_as_silence_grows() -> None:
    asked = []

    def verdicts(s: int) -> float:
        asked.append(s)
        return 0.9 if s >= 900 else 0.1

    assert run(SemanticPolicy(rejudge_every_ms=400), verdicts) == 992
    assert asked == [160, 576, 992]


def test_the_audio_is_first_judged_at_judge_after_ms_however_early_the_pause_was_noticed() -> None:
    """Speculation may notice the pause sooner (e.g. 64 ms): the model still first hears 160 ms of silence."""
    policy = SemanticPolicy(judge_after_ms=160)
    assert policy.step(64) == policy.step(128) == Step("wait", 160)
    assert policy.step(160) == Step("judge")
    assert policy.step(160, 0.9, 160).until_ms == 200  # complete, but not before complete_silence_ms
    assert run(attrs.evolve(policy, judge_after_ms=320), lambda s: 0.9) == 320


@pytest.mark.parametrize(("eagerness", "cap"), [("high", 1000), ("medium", 2000), ("low", 3000)])
def test_the_eagerness_cap_ends_a_turn_judged_incomplete(eagerness: str, cap: int) -> None:
    ended = run(SemanticPolicy.for_eagerness(eagerness), lambda s: 0.0)
    assert cap <= ended < cap + 32


def test_an_unfinished_transcript_overrides_a_complete_audio_verdict() -> None:
    policy = SemanticPolicy.for_eagerness("high")
    assert run(policy, lambda s: 0.99, transcript="I'd like a table for") >= 1000
    assert run(policy, lambda s: 0.99, transcript="A table for four, please.") == 224


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("book a table for", True),
        ("Ask not what your country can do.", False),
        ("and then the...", True),
        ("Where is the Eiffel Tower?", False),
        ("I want to", True),
        ("", False),
        (None, False),
    ],
)
def test_transcript_unfinished(text, unfinished) -> None:
    assert transcript_unfinished(text) is unfinished


def test_fixed_silence_is_server_vad() -> None:
    assert run(FixedSilencePolicy(silence_ms=500), lambda s: 1.0) == 512


def test_a_low_text_score_overrides_a_complete_audio_verdict() -> None:
    """The text end-of-turn model's score, when given, holds the turn below ``text_threshold``."""
    policy = SemanticPolicy.for_eagerness("high")
    held = policy.step(224, 0.99, 224, "Call my sister until her that.", text_probability=0.004)
    assert (held.action, held.reason) == ("wait", "incomplete")
    assert policy.step(224, 0.99, 224, "What time is it?", text_probability=0.6).action == "end"
    assert policy.step(224, 0.99, 224, "What time is it?", text_probability=None).action == "end"  # no score
    # The threshold is the policy's; the audio verdict still has its say.
    assert policy.step(224, 0.99, 224, "Play music.", text_probability=0.04).action == "wait"
    assert attrs.evolve(policy, text_threshold=0.03).step(224, 0.99, 224, "Play music.", 0.04).action == "end"
    assert policy.step(224, 0.1, 224, "What time is it?", text_probability=0.9).action == "wait"
    # The cap ends the turn whatever the words score.
    assert policy.step(1024, 0.99, 640, "Call my sister until her that.", 0.0).action == "end"
