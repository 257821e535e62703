"""Fake engines: deterministic stand-ins for tests of the machinery and for load tests.

They sleep with ``trio.sleep`` (so Trio's MockClock drives them in tests) and record what they
were asked, so a test can check what the session sent and whether it closed a stream early.
They are never used unless a test, the bench or ``voiceorch serve --fake-engines`` asks.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from .base import (
    SAMPLE_RATE,
    ChatMessage,
    EngineError,
    LanguageModel,
    ReplyDelta,
    SpeechToText,
    TextToSpeech,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from .tools import ServerTools, ToolResult, ToolSpec


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

    ``steps`` scripts replies that call tools: each request takes the next step (then ``reply``
    once they are used up), whose text is streamed word by word and whose :class:`ToolCall`
    items as two :class:`ToolCallDelta` pieces each (the arguments split in two); such a step
    ends with ``"tool_calls"``. ``tools`` keeps the names offered with each request.
    """

    reply: str = "Sure thing. Here is a short answer. Anything else?"
    first_delay: float = 0.1
    delta_delay: float = 0.02
    error: EngineError | None = None
    fail_after_deltas: int = 0
    finish_reason: str | None = "stop"
    steps: list[list[str | ToolCall]] = attrs.field(factory=list)
    requests: list[list[ChatMessage]] = attrs.field(factory=list)
    tools: list[list[str]] = attrs.field(factory=list)
    finished: int = 0
    closed_early: int = 0

    async def stream_reply(
        self,
        messages: Sequence[ChatMessage],
        deltas: trio.MemorySendChannel[ReplyDelta],
        *,
        tools: Sequence[ToolSpec] = (),
        tool_choice: ToolChoice = "auto",
    ) -> str | None:
        self.requests.append(list(messages))
        self.tools.append([tool.name for tool in tools])
        step = self.steps.pop(0) if self.steps else [self.reply]
        pieces: list[ReplyDelta] = []
        calls = 0
        for item in step:
            if isinstance(item, str):
                for word in item.split(" "):
                    pieces.append(" " + word if any(isinstance(x, str) for x in pieces) else word)
            else:
                half = len(item.arguments) // 2
                for part in (item.arguments[:half], item.arguments[half:]):
                    pieces.append(ToolCallDelta(index=calls, call_id=item.call_id, name=item.name, arguments=part))
                calls += 1
        with deltas:
            try:
                await trio.sleep(self.first_delay)
                for index, piece in enumerate(pieces):
                    if self.error is not None and index == self.fail_after_deltas:
                        raise self.error
                    if index:
                        await trio.sleep(self.delta_delay)
                    await deltas.send(piece)
            except trio.Cancelled:
                self.closed_early += 1
                raise
        self.finished += 1
        return "tool_calls" if any(isinstance(item, ToolCall) for item in step) else self.finish_reason


@attrs.define
class FakeServerTools(ServerTools):
    """Server-side tools for tests: each call takes ``delay`` seconds and answers
    ``results[name]`` (an error result for a name it does not have). ``calls`` records every
    call started, ``finished`` the names of those that returned, ``cancelled`` those that were
    cancelled."""

    results: dict[str, str] = attrs.field(factory=dict)
    delay: float = 0.1
    calls: list[tuple[str, str]] = attrs.field(factory=list)
    finished: list[str] = attrs.field(factory=list)
    cancelled: list[str] = attrs.field(factory=list)

    def specs(self) -> list[ToolSpec]:
        return [ToolSpec(name=name, description=f"fake tool {name}") for name in self.results]

    async def call(self, name: str, arguments: str) -> ToolResult:
        self.calls.append((name, arguments))
        try:
            await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled.append(name)
            raise
        self.finished.append(name)
        if name not in self.results:
            return ToolResult(output=f"no tool named {name!r}", is_error=True)
        return ToolResult(output=self.results[name])


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
class FakeEndOfTurn:
    """A fake end-of-turn model: each judgement returns the next of ``verdicts`` (the last one
    repeats), after ``delay`` seconds; it records the audio lengths it was asked about (bytes)."""

    verdicts: list[float] = attrs.field(factory=lambda: [1.0])
    delay: float = 0.05
    judged: list[int] = attrs.field(factory=list)

    async def judge(self, pcm: bytes) -> float:
        self.judged.append(len(pcm))
        await trio.sleep(self.delay)
        return self.verdicts[min(len(self.judged), len(self.verdicts)) - 1]

    async def warm_up(self) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define
class FakeTextEndOfTurn:
    """A fake text end-of-turn model: ``scores`` maps a transcript to its probability (``default``
    for any other), after ``delay`` seconds; it records the texts it was asked about. ``error``,
    if set, is raised instead."""

    scores: dict[str, float] = attrs.field(factory=dict)
    default: float = 0.5
    delay: float = 0.05
    error: Exception | None = None
    asked: list[str] = attrs.field(factory=list)

    async def probability(self, text: str) -> float:
        self.asked.append(text)
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.scores.get(text, self.default)

    async def warm_up(self) -> None:
        await trio.lowlevel.checkpoint()


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
