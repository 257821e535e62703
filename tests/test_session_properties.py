"""Property-based: random interleavings of speech, silence, typed turns, cancels and barge-ins
(words, backchannels and coughs over a reply, which pause it, then interrupt or resume it, or
interrupt it at once) through a session with fake engines (MockClock), checking the invariants
after every step."""

from __future__ import annotations

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from session_harness import connected, count_tasks, fake_engines
from test_barge_in import FRAME, REPLY, stream
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS
from voiceorch.session import SessionSettings

#: Sample values of fake speech that the fake STT below hears as a backchannel, or as no words.
MM_HM, COUGH = 700, 600


@attrs.define
class HearingSTT(FakeSTT):
    """A fake STT whose transcript depends on the audio: words if it holds ordinary fake speech
    (1000), "Mm-hmm." if only backchannel speech, nothing if only coughs."""

    async def transcribe(self, pcm: bytes) -> str:
        await super().transcribe(pcm)
        heard = set(pcm[i : i + 2] for i in range(0, len(pcm), 2))
        if (1000).to_bytes(2, "little", signed=True) in heard:
            return "hello there"
        return "Mm-hmm." if MM_HM.to_bytes(2, "little", signed=True) in heard else ""


async def sound(client, value: int, ms: int) -> None:
    async with client.microphone:
        for _ in range(ms // FRAME):
            await client.send(value.to_bytes(2, "little", signed=True) * (16 * FRAME))
            await trio.sleep(FRAME / 1000)


ACTIONS = st.one_of(
    st.tuples(st.just("speech"), st.integers(1, 40).map(lambda n: n * 20)),
    st.tuples(st.just("mm-hm"), st.integers(5, 30).map(lambda n: n * 20)),
    st.tuples(st.just("cough"), st.integers(5, 20).map(lambda n: n * 20)),
    # A typed question, then a backchannel or a cough over its reply after ``n`` ms.
    st.tuples(st.just("text+mm-hm"), st.integers(0, 150).map(lambda n: n * 20)),
    st.tuples(st.just("text+cough"), st.integers(0, 150).map(lambda n: n * 20)),
    st.tuples(st.just("silence"), st.integers(1, 50).map(lambda n: n * 20)),
    st.tuples(st.just("text"), st.just(0)),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("clear"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 300).map(lambda n: n * 10)),
)


def check_log(log: list) -> None:
    """Framing, barge-in and status invariants over everything the client received so far."""
    open_turn, interrupted, seen, paused = None, set(), set(), False
    for item in log:
        if isinstance(item, bytes):
            assert open_turn is not None, "audio outside a response"
            assert open_turn not in interrupted, "audio after response.interrupted"
            assert not paused, "audio of a paused response"
        elif item.TYPE == "response.paused":
            assert item.turn_id == open_turn and not paused
            paused = True
        elif item.TYPE == "response.resumed":
            assert item.turn_id == open_turn and paused
            assert item.resume_ms <= item.played_ms and REPLY.startswith(item.heard_text)
            paused = False
        elif item.TYPE == "response.created":
            assert open_turn is None and item.turn_id not in seen
            open_turn = item.turn_id
            seen.add(item.turn_id)
        elif item.TYPE == "response.interrupted":
            assert item.turn_id == open_turn
            interrupted.add(item.turn_id)
            paused = False
        elif item.TYPE == "response.done":
            assert item.turn_id == open_turn
            assert (item.status == "interrupted") == (item.turn_id in interrupted)
            assert item.status in ("completed", "cancelled", "interrupted", "failed")
            if item.status == "completed":
                assert item.text == REPLY and not paused
            open_turn, paused = None, False
        elif item.TYPE == "error":
            assert item.code in ("no_active_response", "busy", "input_audio_buffer_empty", "no_speech")


def check_history(session) -> None:
    """The history holds only words the user heard: prefixes of the reply, never more."""
    for message in session.conversation.messages:
        if message.role == "assistant":
            assert message.content and REPLY.startswith(message.content), message.content


async def run_scenario(actions, interruption: str = "pause_and_decide") -> None:
    engines = fake_engines(
        stt=HearingSTT(delay=0.15), llm=FakeLLM(first_delay=0.1, delta_delay=0.05), tts=FakeTTS(delay=0.1)
    )
    settings = SessionSettings(turn_detection=p.TurnDetection(interruption=interruption))
    async with connected(engines, settings) as client:
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        for kind, amount in actions:
            if kind in ("speech", "silence"):
                await stream(client, (kind, amount))
            elif kind in ("mm-hm", "cough"):
                await sound(client, MM_HM if kind == "mm-hm" else COUGH, amount)
            elif kind.startswith("text+"):
                await client.send({"type": "input_text", "text": "typed question"})
                await stream(client, ("silence", amount))
                await sound(client, MM_HM if kind == "text+mm-hm" else COUGH, 300)
                await stream(client, ("silence", 600))
            elif kind == "text":
                await client.send({"type": "input_text", "text": "typed question"})
            elif kind == "cancel":
                await client.send({"type": "response.cancel"})
            elif kind == "clear":
                await client.send({"type": "input_audio.clear"})
            else:
                await trio.sleep(amount / 1000)
            await trio.testing.wait_all_tasks_blocked()
            check_log(client.log)
            check_history(client.session)
        # Let everything finish: silence ends any utterance, then every response plays out.
        await stream(client, ("silence", 1000))
        await trio.sleep(30)
        await trio.testing.wait_all_tasks_blocked()
        check_log(client.log)
        check_history(client.session)
        created = client.events("response.created")
        assert len(client.events("response.done")) == len(created)
        assert client.session._unfinished == []
        assert count_tasks() == idle_tasks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=1, max_size=25), st.sampled_from(["pause_and_decide", "immediate"]))
def test_random_interleavings_keep_every_invariant(actions, interruption):
    trio.run(run_scenario, actions, interruption, clock=trio.testing.MockClock(autojump_threshold=0))
