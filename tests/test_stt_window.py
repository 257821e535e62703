"""Whisper with an encoder window sized to the utterance (the embedded tiny.en, real speech)."""

from __future__ import annotations

import threading
import wave
from pathlib import Path

import pytest
import trio

from voiceorch.engines.embedded import whisper_model_dir
from voiceorch.engines.whisper_stt import WhisperSTT
from voiceorch.engines.whisper_windowed import WindowedWhisperSTT, repeats

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


def _gate() -> tuple[list[tuple[int, str]], threading.Event, threading.Event, object]:
    """A unit hook that logs (call, unit) and holds the first unit until ``release`` is set."""
    log: list[tuple[int, str]] = []
    entered, release = threading.Event(), threading.Event()

    def hook(call: int, unit: str) -> None:
        log.append((call, unit))
        if len(log) == 1:
            entered.set()
            release.wait(60)

    return log, entered, release, hook


@pytest.mark.models
@pytest.mark.parametrize("repeat", [2, 3], ids=["22s-window", "33s-faster-whisper-segments"])
async def test_a_cancelled_transcription_stops_after_its_unit_in_progress(stt: WindowedWhisperSTT, repeat: int) -> None:
    """Long audio, cancelled while its first unit runs: the call returns at once, its thread runs
    no further unit, and the next call starts as soon as that unit ends."""
    log, entered, release, hook = _gate()
    stt.on_unit = hook
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def cancelled() -> None:
                    with scope:
                        await stt.transcribe(_pcm("jfk_16k.wav") * repeat)

                nursery.start_soon(cancelled)
                await trio.to_thread.run_sync(entered.wait)
                scope.cancel()
            assert not release.is_set()  # it returned while its thread was still inside a unit
            release.set()
            text = await stt.transcribe(_pcm("hotwords_16k.wav"))
    finally:
        release.set()
        stt.on_unit = None
    first = log[0][0]
    assert [unit for call, unit in log if call == first] == ["features"]
    assert [unit for call, unit in log if call != first][:3] == ["features", "encode", "generate@0"]
    assert "comfy" in text.lower()
    assert stt.limiter.borrowed_tokens == 0


@pytest.mark.models
async def test_full_window_whisper_stops_between_segments(stt: WindowedWhisperSTT) -> None:
    """The 30 s engine's unit is a segment: cancelled in the first of two, it decodes no second."""
    full = WhisperSTT(model=stt.model)
    log, entered, release, hook = _gate()
    full.on_unit = hook
    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def cancelled() -> None:
                    with scope:
                        await full.transcribe(_pcm("jfk_16k.wav") * 3)

                nursery.start_soon(cancelled)
                await trio.to_thread.run_sync(entered.wait)
                scope.cancel()
            release.set()
            assert "ask not" in (await full.transcribe(_pcm("jfk_16k.wav"))).lower()
    finally:
        release.set()
    first = log[0][0]
    assert [unit for call, unit in log if call == first] == ["segment"]
    assert full.limiter.borrowed_tokens == 0


@pytest.mark.models
async def test_cancelled_before_it_starts_runs_nothing(stt: WindowedWhisperSTT) -> None:
    log, _entered, release, hook = _gate()
    release.set()
    stt.on_unit = hook
    try:
        with trio.move_on_after(0) as scope:
            await stt.transcribe(_pcm("jfk_16k.wav"))
        assert scope.cancelled_caught
        with trio.fail_after(60):
            await stt.transcribe(_pcm("hotwords_16k.wav"))
    finally:
        stt.on_unit = None
    assert len({call for call, _unit in log}) == 1  # only the second call ran any unit
    assert stt.limiter.borrowed_tokens == 0


@pytest.mark.models
async def test_the_earlier_text_is_the_prompt(stt: WindowedWhisperSTT) -> None:
    """The prompt is context, not output: it steers the words (the hotwords clip says "comfy UI"),
    and the second half of JFK, given the first as its prompt, comes out without it."""
    pcm = _pcm("jfk_16k.wav")
    with trio.fail_after(60):
        plain = await stt.transcribe(_pcm("hotwords_16k.wav"))
        steered = await stt.transcribe(_pcm("hotwords_16k.wav"), prompt="ComfyUI")
        tail = await stt.transcribe(pcm[16000 * 2 * 3 :], prompt="And so my fellow Americans,")
    assert "comfy eye folder" in plain.lower() and "comfy ui folder" in steered.lower()
    assert "ask not what your country can do for you" in tail.lower() and "fellow" not in tail.lower()


def test_a_phrase_three_times_in_a_row_is_a_loop() -> None:
    assert repeats("4 people to hide. 4 people to hide. 4 people to hide.")
    assert repeats("and rice, chicken and rice chicken and rice chicken")
    assert not repeats("4 people to hide. 4 people to hide.")
    assert not repeats("no no no")  # one word is not a phrase
    assert not repeats("ask not what your country can do for you ask what you can do for your country")


@pytest.mark.models
async def test_timestamped_text_past_the_audio_or_repeating_is_dropped(stt: WindowedWhisperSTT) -> None:
    await stt.transcribe(bytes(32000))  # makes the tokenizer
    tokenizer = stt._tokenizer

    def at(seconds: float) -> int:
        return tokenizer.timestamp_begin + round(seconds / 0.02)

    hello, later = tokenizer.encode(" Hello there."), tokenizer.encode(" Made up.")
    tokens = [at(0.0), *hello, at(1.0), at(1.0), *hello, at(1.8), at(2.4), *later, at(3.0)]
    assert stt._text(tokens, duration_s=2.0) == "Hello there."
    assert stt._text(tokens, duration_s=3.0) == "Hello there. Made up."
    assert stt._text([at(0.0), *hello], duration_s=2.0) == "Hello there."  # no closing timestamp
