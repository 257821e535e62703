"""The Smart Turn end-of-turn engine on the real speech of tests/data (JFK's pauses, hotwords).

Needs the ONNX file (``python -m voiceorch.engines.end_of_turn fetch``): run.sh's set-up fetches
it, and the tests fail without it.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import trio

from voiceorch.engines.end_of_turn import WINDOW_SAMPLES, SmartTurn, default_model_path, smart_turn_features

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.models


def _pcm(name: str, end_s: float | None = None) -> bytes:
    with wave.open(str(DATA / name)) as w:
        pcm = w.readframes(w.getnframes())
    return pcm if end_s is None else pcm[: int(end_s * 16000) * 2]


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    # run.sh's set-up fetches it: a missing file is a failure, not a skip.
    assert default_model_path().is_file(), (
        f"{default_model_path()} absent: python -m voiceorch.engines.end_of_turn fetch"
    )
    return SmartTurn.load()


def test_features_keep_the_last_8_seconds_left_padded() -> None:
    tone = np.sin(np.arange(16000) / 5).astype(np.float32) * 0.5
    short = smart_turn_features(tone)
    assert short.shape == (1, 80, 800)
    # Left padding: the speech sits at the end of the window, silence (the floor) before it.
    assert short[0, :, :600].std() < short[0, :, -90:].std()
    long = np.concatenate([np.zeros(WINDOW_SAMPLES, np.float32), tone])
    np.testing.assert_allclose(smart_turn_features(long), short, atol=1e-4)


async def test_a_finished_sentence_scores_above_its_cuts_at_the_pauses(model: SmartTurn) -> None:
    complete = await model.judge(_pcm("jfk_16k.wav"))
    # Cut in JFK's real mid-sentence pauses: "... ask not" / "... what your country can do" / "... ask what you can do"
    cuts = [await model.judge(_pcm("jfk_16k.wav", end)) for end in (3.46, 4.32, 7.58, 8.58)]
    assert complete > 0.5
    assert max(cuts) < 0.2 < complete


async def test_judge_is_cancellable_and_frees_the_limiter(model: SmartTurn) -> None:
    with trio.move_on_after(0) as scope:
        await model.judge(_pcm("jfk_16k.wav"))
    assert scope.cancelled_caught
    assert 0.0 <= await model.judge(_pcm("hotwords_16k.wav")) <= 1.0
    assert model.limiter.borrowed_tokens == 0
