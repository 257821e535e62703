"""Whisper with an encoder window sized to the utterance (the embedded tiny.en, real speech)."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import trio

from voiceorch.engines.embedded import whisper_model_dir
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT

DATA = Path(__file__).parent / "data"


def _pcm(name: str) -> bytes:
    with wave.open(str(DATA / name)) as w:
        return w.readframes(w.getnframes())


def test_the_window_is_the_utterance_plus_the_margin_in_whole_seconds() -> None:
    stt = WindowedWhisperSTT(model=None, margin_s=1.0, min_window_s=2.0, max_window_s=30.0)
    assert stt.window_frames(16000 * 4) == 500
    assert stt.window_frames(16000 * 4 + 1) == 600
    assert stt.window_frames(100) == 200
    assert stt.window_frames(16000 * 60) == 3000


@pytest.fixture(scope="module")
def stt() -> WindowedWhisperSTT:
    return WindowedWhisperSTT.load(whisper_model_dir(), margin_s=3.0)  # (missing model: a failure)


@pytest.mark.models
async def test_real_speech_in_a_short_window(stt: WindowedWhisperSTT) -> None:
    text = (await stt.transcribe(_pcm("jfk_16k.wav"))).lower()
    assert "ask not what your country can do for you" in text
    assert "comfy" in (await stt.transcribe(_pcm("hotwords_16k.wav"))).lower()
    assert await stt.transcribe(bytes(32000)) == ""


@pytest.mark.models
async def test_transcribe_is_cancellable_and_frees_the_limiter(stt: WindowedWhisperSTT) -> None:
    with trio.move_on_after(0) as scope:
        await stt.transcribe(_pcm("jfk_16k.wav"))
    assert scope.cancelled_caught
    await stt.transcribe(_pcm("hotwords_16k.wav"))
    assert stt.limiter.borrowed_tokens == 0
