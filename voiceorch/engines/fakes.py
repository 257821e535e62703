"""Fake engines: deterministic stand-ins for tests of the machinery and for load tests.

They sleep with ``trio.sleep`` (so Trio's MockClock drives them in tests) and record what they
were asked, so a test can check what the session sent and whether it closed a stream early.
They are never used unless a test, the bench or ``voiceorch serve --fake-engines`` asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from .base import SAMPLE_RATE, ChatMessage, EngineError, LanguageModel, SpeechToText, TextToSpeech


@attrs.define
class FakeSTT(SpeechToText):
    """Returns ``text`` (or ``texts`` in turn) after ``delay`` seconds."""

    text: str = "hello there"
    texts: list[str] = attrs.field(factory=list)
    delay: float = 0.2
    error: EngineError | None = None
    calls: list[int] = attrs.field(factory=list)  # audio bytes per call
    prompts: list[str | None] = attrs.field(factory=list)  # the prompt of each call

    async def transcribe(self, pcm: bytes, *, prompt: str | None = None) -> str:
        self.calls.append(len(pcm))
        self.prompts.append(prompt)
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.texts.pop(0) if self.texts else self.text


@attrs.define
class FakeLLM(LanguageModel):
    """Streams ``reply`` word by word: first after ``first_delay``, then every ``delta_delay``.

    ``requests`` keeps every request's messages; ``closed_early`` counts streams that were
    cancelled before their end (as an HTTP stream closed by the client); ``error`` raised
    after ``fail_after_deltas`` deltas, if set. A reply streamed to its end returns
    ``finish_reason`` (``"length"`` plays a reply cut off at the token limit).
    """

    reply: str = "Sure thing. Here is a short answer. Anything else?"
    first_delay: float = 0.1
    delta_delay: float = 0.02
    error: EngineError | None = None
    fail_after_deltas: int = 0
    finish_reason: str | None = "stop"
    requests: list[list[ChatMessage]] = attrs.field(factory=list)
    finished: int = 0
    closed_early: int = 0

    async def stream_reply(self, messages: Sequence[ChatMessage], deltas: trio.MemorySendChannel[str]) -> str | None:
        self.requests.append(list(messages))
        words = self.reply.split(" ")
        with deltas:
            try:
                await trio.sleep(self.first_delay)
                for index, word in enumerate(words):
                    if self.error is not None and index == self.fail_after_deltas:
                        raise self.error
                    if index:
                        await trio.sleep(self.delta_delay)
                    await deltas.send(word if index == 0 else " " + word)
            except trio.Cancelled:
                self.closed_early += 1
                raise
        self.finished += 1
        return self.finish_reason


def fake_pcm(text: str, ms_per_char: float) -> bytes:
    """Non-silent 16 kHz PCM lasting ``ms_per_char`` per character of ``text``."""
    samples = int(len(text) * ms_per_char * SAMPLE_RATE / 1000)
    return (1000).to_bytes(2, "little", signed=True) * samples


@attrs.define
class FakeTTS(TextToSpeech):
    """Returns ``ms_per_char`` of audio per character after ``delay`` seconds (or after
    ``delays[i]`` for the i-th sentence, where given)."""

    delay: float = 0.05
    delays: list[float] = attrs.field(factory=list)
    ms_per_char: float = 60.0
    error: EngineError | None = None
    texts: list[str] = attrs.field(factory=list)
    finished: int = 0

    async def synthesize(self, text: str) -> bytes:
        self.texts.append(text)
        index = len(self.texts) - 1
        await trio.sleep(self.delays[index] if index < len(self.delays) else self.delay)
        if self.error is not None:
            raise self.error
        self.finished += 1
        return fake_pcm(text, self.ms_per_char)


@attrs.define
class FakeVAD:
    """Speech is any chunk whose mean absolute sample is at least ``level`` (silence is zeros)."""

    level: int = 500

    def new_stream(self) -> FakeVADStream:
        return FakeVADStream(self.level)


@attrs.define
class FakeVADStream:
    level: int

    def probability(self, chunk: bytes) -> float:
        samples = memoryview(chunk).cast("h")
        return 1.0 if sum(abs(s) for s in samples[::16]) >= self.level * len(samples[::16]) else 0.0
