"""The reader does not wait for the speech detector's model: audio keeps coming in while a batch
is judged, and what came meanwhile is judged together in the next request, with the same
decisions as judging frame by frame.

The model here is a fake that judges like ``FakeVAD`` but through ``probabilities`` (so the
session sends it to ``vad_batch``'s thread, as it does Silero), and that can be held closed.
No clock is mocked: the model answers from a real thread, and nothing here is about time.
"""

from __future__ import annotations

import threading

import attrs
import trio

from session_harness import connected, fake_engines
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeVADStream
from voiceorch.session import SessionSettings

FRAME = 20 * p.BYTES_PER_MS
SPEECH = (3000).to_bytes(2, "little", signed=True) * (FRAME // 2)
SILENCE = bytes(FRAME)
SERVER_VAD = SessionSettings(speculate_after_ms=None)


@attrs.define
class GatedBatchVAD:
    """A fake speech model judged in a batch: each call waits for ``gate`` (a threading.Event)."""

    gate: threading.Event = attrs.field(factory=threading.Event)
    calls: list[int] = attrs.field(factory=list)  # chunks per call, in order

    def new_stream(self) -> GatedBatchStream:
        return GatedBatchStream(self)


@attrs.define
class GatedBatchStream:
    model_: GatedBatchVAD
    inner: FakeVADStream = attrs.field(factory=lambda: FakeVADStream(500))

    def probabilities(self, chunks: list[bytes]) -> list[float]:
        self.model_.calls.append(len(chunks))
        if not self.model_.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        return [self.inner.probability(chunk) for chunk in chunks]


async def _until(predicate) -> None:
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.005)


def _speech_events(client) -> list[tuple[str, int]]:
    kinds = ("input_audio.speech_started", "input_audio.speech_stopped", "input_audio.committed")
    return [(e.TYPE, getattr(e, "audio_ms", None)) for e in client.events() if e.TYPE in kinds]


async def test_the_reader_takes_audio_while_the_model_judges_and_the_rest_goes_in_one_request():
    vad = GatedBatchVAD()
    async with connected(fake_engines(vad=vad), SERVER_VAD) as client:
        frames = [SPEECH] * 25 + [SILENCE] * 40
        for frame in frames[:10]:
            await client.send(frame)
        # All ten frames were taken in, though the model has not answered its first request
        # (the batcher has one request in flight at a time, held at the gate).
        await _until(lambda: client.session._turns.input_bytes == 10 * FRAME and vad.calls)
        await trio.sleep(0.05)
        assert vad.calls == [1]
        vad.gate.set()
        await _until(lambda: len(vad.calls) >= 2)
        assert vad.calls[1] > 1  # the frames taken in meanwhile went together
        for frame in frames[10:]:
            await client.send(frame)
        await client.until("input_audio.committed")
        gated = _speech_events(client)
    assert [kind for kind, _ in gated] == [
        "input_audio.speech_started",
        "input_audio.speech_stopped",
        "input_audio.committed",
    ]

    # The same audio judged frame by frame, inline (the plain fake): the same decisions.
    async with connected(fake_engines(), SERVER_VAD) as client:
        for frame in frames:
            await client.send(frame)
        await client.until("input_audio.committed")
        inline = _speech_events(client)
    assert gated == inline
