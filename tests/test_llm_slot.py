"""The LLM's request slot is held only while the reply is generated, not while it plays.

Two sessions share an LLM that runs one request at a time (``--llm-concurrency 1``, as the
embedded child): the second session's reply must not wait for the first one's audio to play
(under Trio's MockClock, so every figure is virtual time).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import trio

from session_harness import fake_engines
from voiceorch import protocol as p
from voiceorch.engines.base import ChatMessage
from voiceorch.engines.fakes import FakeLLM, FakeTTS
from voiceorch.session.history import Conversation
from voiceorch.session.settings import SessionSettings
from voiceorch.session.turn import Turn, run_turn

#: 30 sentences of 5 words: about 3 s of generation at 20 ms a word, 45 s of audio.
LONG_REPLY = " ".join(f"This is sentence number {i}." for i in range(30))


@attrs.define
class FakeOneSlotLLM:
    """A FAKE LLM holding a one-request ``CapacityLimiter`` for the whole of each stream, as
    ``OpenAICompatibleLLM`` with ``max_concurrent_requests=1`` does."""

    inner: FakeLLM
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))
    released_at: list[float] = attrs.field(factory=list)

    async def stream_reply(self, messages: Sequence[ChatMessage], deltas: trio.MemorySendChannel[str]) -> str | None:
        async with self.limiter:
            try:
                return await self.inner.stream_reply(messages, deltas)
            finally:
                self.released_at.append(trio.current_time())


async def _answer(engines, text: str) -> tuple[float, float]:
    """One session's turn through ``run_turn`` with its own history and outbox: when its first
    audio frame and its ``response.done`` reached the outbox."""
    outbox_send, outbox_recv = trio.open_memory_channel(0)
    first_audio = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_turn(
                Turn.ended("turn_1", text=text),
                engines=engines,
                conversation=Conversation(),
                outbox=outbox_send,
                settings=SessionSettings(),
            )
        )
        async for item in outbox_recv:
            if isinstance(item, bytes):
                if first_audio is None:
                    first_audio = trio.current_time()
            elif isinstance(item, p.ResponseDone):
                assert item.status == "completed"
                return first_audio, trio.current_time()
    raise AssertionError("no response.done")


async def test_a_second_session_is_not_delayed_by_the_first_sessions_playback(autojump_clock):
    llm = FakeOneSlotLLM(FakeLLM(reply=LONG_REPLY, first_delay=0.1, delta_delay=0.02))
    engines = fake_engines(llm=llm, tts=FakeTTS(delay=0.05, ms_per_char=60.0))
    times: dict[str, tuple[float, float]] = {}
    start = trio.current_time()

    async def session(name: str, delay: float) -> None:
        await trio.sleep(delay)
        times[name] = await _answer(engines, f"Tell me a long story, {name}.")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session, "first", 0)
        nursery.start_soon(session, "second", 0.5)  # while the first reply streams
    first_audio_1, done_1 = times["first"]
    first_audio_2, done_2 = times["second"]
    assert done_1 - start > 40  # the first reply plays for about 45 s ...
    # ... but its LLM request ended with its generation (about 3 s), so the second session's
    # reply was generated next and its audio began long before the first reply finished.
    assert llm.released_at[0] - start < 5
    assert first_audio_2 - start < 10
    assert first_audio_2 < done_1 - 30
