"""Silero judged in batches off the event loop decides exactly as judged chunk by chunk.

Real Silero v6 (the ONNX file faster-whisper ships; loads in well under a second), real
speech (tests/data/*.wav), real clock (the batch runs in a worker thread)."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
import trio

from voiceorch.engines import vad_batch
from voiceorch.engines.silero_vad import SileroVAD
from voiceorch.session.speech_detector import SpeechDetector

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def silero():
    return SileroVAD.load()


def pcm(name: str) -> bytes:
    with wave.open(str(DATA / name)) as f:
        assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
        return f.readframes(f.getnframes())


def detector(silero) -> SpeechDetector:
    return SpeechDetector(silero.new_stream(), threshold=0.5, min_speech_ms=150, silence_ms=300, pause_ms=100)


def judged_one_by_one(silero, audio: bytes, frame: int) -> list:
    d = detector(silero)
    out = []
    for offset in range(0, len(audio), frame):
        out += [(offset, x) for x in d.feed(audio[offset : offset + frame])]
    return out


async def judged_batched(silero, audio: bytes, frame: int, out: list) -> None:
    d = detector(silero)
    for offset in range(0, len(audio), frame):
        for probability in await vad_batch.probabilities(d.stream, d.chunks(audio[offset : offset + frame])):
            decision = d.feed_probability(probability)
            if decision is not None:
                out.append((offset, decision))


async def test_batched_decisions_are_exactly_the_chunk_by_chunk_decisions(silero):
    # Several sessions at once, with different frame sizes (1 to 7 chunks a frame, and partial
    # chunks), so the batches mix streams and sequence lengths.
    cases = [(name, frame) for name in ("jfk_16k.wav", "hotwords_16k.wav") for frame in (640, 1024, 3200, 7000)]
    expected = [judged_one_by_one(silero, pcm(name), frame) for name, frame in cases]
    got = [[] for _ in cases]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for (name, frame), out in zip(cases, got):
                nursery.start_soon(judged_batched, silero, pcm(name), frame, out)
    assert all(expected), "the recordings hold speech"
    assert got == expected
    stats = vad_batch.batcher().statistics()
    assert stats["batches"] < stats["requests"]  # several streams shared a thread hop


async def test_a_session_leaving_mid_batch_does_not_break_the_batch_for_the_others(silero):
    audio = pcm("jfk_16k.wav")
    expected = judged_one_by_one(silero, audio, 1024)
    got, leaver = [], []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(judged_batched, silero, audio, 1024, got)
            for _ in range(3):  # leave at different points: waiting, in a batch, between
                async with trio.open_nursery() as leaving:
                    leaving.start_soon(judged_batched, silero, audio, 1024, leaver)
                    await trio.sleep(0.01)
                    leaving.cancel_scope.cancel()
    assert got == expected and len(leaver) < 3 * len(expected)


async def test_one_streams_failure_is_its_callers_alone(silero):
    good = silero.new_stream()
    chunk = pcm("jfk_16k.wav")[32000:33024]
    async with trio.open_nursery() as nursery:
        results = {}

        async def bad():
            with pytest.raises(ValueError):
                await vad_batch.probabilities(silero.new_stream(), [b"\x00" * 10])

        async def ok():
            results["ok"] = await vad_batch.probabilities(good, [chunk])

        nursery.start_soon(bad)
        nursery.start_soon(ok)
    assert results["ok"] == [silero.new_stream().probability(chunk)]


def test_many_streams_in_one_call_are_exactly_each_stream_judged_alone(silero):
    # Streams at different points of different recordings, 0 to 3 chunks each per round (so the
    # steps of one call have different numbers of rows), over enough rounds for speech and silence.
    audio = [pcm("jfk_16k.wav"), pcm("hotwords_16k.wav")]
    batched = [silero.new_stream() for _ in range(6)]
    alone = [silero.new_stream() for _ in range(6)]
    offsets = [i * 7 * 1024 for i in range(6)]
    rounds = 0
    for round_ in range(60):
        work = []
        for i in range(6):
            count = (round_ + i) % 4
            source = audio[i % 2]
            chunks = [source[(offsets[i] + k * 1024) % (len(source) - 1024) :][:1024] for k in range(count)]
            offsets[i] += count * 1024
            work.append((batched[i], chunks))
        answers = silero.probabilities_many(work)
        assert answers == [stream.probabilities(chunks) for stream, (_, chunks) in zip(alone, work)]
        rounds += 1
    assert rounds == 60
    for one, other in zip(batched, alone):
        assert (one._h == other._h).all() and (one._c == other._c).all() and (one._context == other._context).all()


def test_a_bad_stream_in_a_batch_gets_its_error_and_the_others_their_answers(silero):
    chunk = pcm("jfk_16k.wav")[32000:33024]
    good, bad = silero.new_stream(), silero.new_stream()
    answers = silero.probabilities_many([(good, [chunk, chunk]), (bad, [chunk, b"\x00" * 10])])
    assert answers[0] == silero.new_stream().probabilities([chunk, chunk])
    assert isinstance(answers[1], ValueError)
    assert (bad._h == 0).all()  # its state did not move
