"""The text end-of-turn model on the real embedded SmolLM2-135M GGUF: finished sentences score
above the policy's threshold, sentences cut where a speaker paused score below it."""

from __future__ import annotations

import pytest
import trio

from voiceorch.engines.text_end_of_turn import TextTurnModel
from voiceorch.session.end_of_turn_policy import SemanticPolicy

pytestmark = pytest.mark.models

THRESHOLD = SemanticPolicy().text_threshold

# Transcripts Whisper tiny.en wrote for the pause corpus (bench/baselines/turn_eval.md): halves
# cut in a mid-sentence pause, some written as finished sentences, and whole sentences.
CUT = [
    "Call my sister until her that.",
    "Time the heating up too.",
    "And so my fellow Americans ask not",
    "How many people live in that.",
    "The meeting has been moved to.",
    "Is there a good restaurant near?",
]
FINISHED = [
    "What is the capital of France?",
    "Is it cold outside?",
    "Do you know if the shop is open on Sunday mornings?",
    "Tell me something interesting about the ocean.",
    "I think the answer is probably 42.",
]


@pytest.fixture(scope="module")
def model() -> TextTurnModel:
    return TextTurnModel.load()


@pytest.mark.parametrize("text", CUT)
def test_a_cut_sentence_scores_below_the_threshold(model, text) -> None:
    assert model.probability_sync(text) < THRESHOLD


@pytest.mark.parametrize("text", FINISHED)
def test_a_finished_sentence_scores_above_the_threshold(model, text) -> None:
    assert model.probability_sync(text) > THRESHOLD


def test_no_words_score_nothing_and_the_score_ignores_trailing_punctuation(model) -> None:
    assert model.probability_sync("") == 0.0 and model.probability_sync(" ... ") == 0.0
    assert model.probability_sync("Is it cold outside") == pytest.approx(model.probability_sync("Is it cold outside?"))


async def test_probability_runs_off_the_event_loop_one_call_at_a_time(model) -> None:
    results = {}

    async def score(text: str) -> None:
        results[text] = await model.probability(text)

    async with trio.open_nursery() as nursery:
        for text in (CUT[0], FINISHED[0]):
            nursery.start_soon(score, text)
    assert results[CUT[0]] < THRESHOLD < results[FINISHED[0]]
    assert model.limiter.total_tokens == 1 and model.limiter.borrowed_tokens == 0
