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


def _silence_at_which_the_turn_ends(model: SmartTurn, pcm: bytes, eagerness: str = "auto") -> float | None:
    """Feed ``pcm`` then 3 s of silence through the turn-taking machine under ``semantic_vad``, with
    real Silero probabilities and real Smart Turn verdicts (answered at once: the clock is the audio's).
    Returns the silence (ms, from the last speech heard) at which the turn ended, or None."""
    from voiceorch import protocol as p
    from voiceorch.engines.silero_vad import SileroVAD
    from voiceorch.session import turn_taking as tt

    vad = SileroVAD.load()
    machine = tt.TurnTaking(
        vad.new_stream, turn_detection=p.TurnDetection(type="semantic_vad", eagerness=eagerness), end_of_turn_model=True
    )
    audio = pcm + bytes(3 * 16000 * 2)
    frame = 640  # 20 ms
    for offset in range(0, len(audio), frame):
        now = (offset + frame) / 32000
        pending = machine.audio(audio[offset : offset + frame], now)
        while pending:
            action = pending.pop(0)
            if isinstance(action, tt.DetectSpeech):
                probabilities = [action.detector.stream.probability(c) for c in action.chunks]
                pending[:0] = machine.vad(action, probabilities, now)
            elif isinstance(action, tt.Judge):
                pending[:0] = machine.verdict(action, model.judge_sync(action.audio), now)
            elif isinstance(action, tt.Emit) and action.event.TYPE == "input_audio.speech_stopped":
                return now * 1000 - action.event.audio_ms
    return None


def test_semantic_turn_taking_ends_a_finished_sentence_early_and_waits_in_a_cut_one(model: SmartTurn) -> None:
    # The end of JFK's sentence, "... for your country.", and its start cut off, "And so my".
    # (Not every real pause is judged right: "And so my fellow Americans," sounds final to the model.)
    finished = _silence_at_which_the_turn_ends(model, _pcm("jfk_16k.wav")[8 * 32000 :])
    cut = _silence_at_which_the_turn_ends(model, _pcm("jfk_16k.wav", 1.4))
    assert finished is not None and finished < 350  # ~200 ms, where server VAD waits 500
    assert cut is not None and cut >= 1000  # kept listening, up to the 2 s cap
