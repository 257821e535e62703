"""Property-based: random interleavings of speech, silence, typed turns, cancels and barge-ins
through a session with fake engines (MockClock), checking the invariants after every step."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from session_harness import connected, count_tasks, fake_engines
from test_barge_in import REPLY, stream
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS
from voiceorch.session import SessionSettings

ACTIONS = st.one_of(
    st.tuples(st.just("speech"), st.integers(1, 40).map(lambda n: n * 20)),
    st.tuples(st.just("silence"), st.integers(1, 50).map(lambda n: n * 20)),
    st.tuples(st.just("text"), st.just(0)),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("clear"), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 300).map(lambda n: n * 10)),
)


def check_log(log: list) -> None:
    """Framing, barge-in and status invariants over everything the client received so far."""
    open_turn, interrupted, seen = None, set(), set()
    for item in log:
        if isinstance(item, bytes):
            assert open_turn is not None, "audio outside a response"
            assert open_turn not in interrupted, "audio after response.interrupted"
        elif item.TYPE == "response.created":
            assert open_turn is None and item.turn_id not in seen
            open_turn = item.turn_id
            seen.add(item.turn_id)
        elif item.TYPE == "response.interrupted":
            assert item.turn_id == open_turn
            interrupted.add(item.turn_id)
        elif item.TYPE == "response.done":
            assert item.turn_id == open_turn
            assert (item.status == "interrupted") == (item.turn_id in interrupted)
            assert item.status in ("completed", "cancelled", "interrupted", "failed")
            if item.status == "completed":
                assert item.text == REPLY
            open_turn = None
        elif item.TYPE == "error":
            assert item.code in ("no_active_response", "busy", "input_audio_buffer_empty", "no_speech")


def check_history(session) -> None:
    """The history holds only words the user heard: prefixes of the reply, never more."""
    for message in session.conversation.messages:
        if message.role == "assistant":
            assert message.content and REPLY.startswith(message.content), message.content


async def run_scenario(actions) -> None:
    engines = fake_engines(
        stt=FakeSTT(delay=0.15), llm=FakeLLM(first_delay=0.1, delta_delay=0.05), tts=FakeTTS(delay=0.1)
    )
    async with connected(engines, SessionSettings()) as client:
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        for kind, amount in actions:
            if kind in ("speech", "silence"):
                await stream(client, (kind, amount))
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
@given(st.lists(ACTIONS, min_size=1, max_size=25))
def test_random_interleavings_keep_every_invariant(actions):
    trio.run(run_scenario, actions, clock=trio.testing.MockClock(autojump_threshold=0))
