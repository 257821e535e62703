"""Property-based: random interleavings of speech, typed turns, tool calls (the client's and the
server's), the client's outputs (on time, late, repeated, unknown), cancels and barge-ins,
injected history and switches between spoken and text-only replies through a session with fake
engines (MockClock), checking the session's invariants and the cancellation rules of tool calls
after every step."""

from __future__ import annotations

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from session_harness import connected, count_tasks, fake_engines
from test_barge_in import REPLY, stream
from test_session_tools import WEATHER, check_pairs
from voiceorch.engines.base import ToolCall
from voiceorch.engines.fakes import FakeLLM, FakeServerTools, FakeSTT, FakeTTS
from voiceorch.logs import turn_id_var
from voiceorch.session import SessionSettings
from voiceorch.session.history import LATE_RESULT_PREFIX

PREAMBLE = "Let me check."
ACTIONS = st.one_of(
    st.tuples(st.just("speech"), st.integers(1, 40).map(lambda n: n * 20)),
    st.tuples(st.just("silence"), st.integers(1, 50).map(lambda n: n * 20)),
    st.tuples(st.just("text"), st.just(0)),
    st.tuples(st.just("cancel"), st.just(0)),
    st.tuples(st.just("answer"), st.just(0)),
    st.tuples(st.just("answer_again"), st.just(0)),
    st.tuples(st.just("bogus"), st.just(0)),
    st.tuples(st.just("history"), st.sampled_from(["user", "assistant", "system"])),
    st.tuples(st.just("modality"), st.sampled_from(["text", "audio"])),
    st.tuples(st.just("wait"), st.integers(1, 300).map(lambda n: n * 10)),
)
#: What one LLM request does: speak, or call the client's tool, the server's, or both.
STEPS = st.sampled_from(["speak", "client", "server", "both", "preamble_client"])


@attrs.define
class CheckedServerTools(FakeServerTools):
    """Fake server tools that note any call started in a response already cancelled."""

    session: object = None
    violations: list[str] = attrs.field(factory=list)

    async def call(self, name: str, arguments: str):
        turn_id = turn_id_var.get()
        for turn in self.session._unfinished:
            if turn.turn_id == turn_id and turn.scope.cancel_called:
                self.violations.append(f"{name} started in cancelled {turn_id}")
        return await super().call(name, arguments)


@attrs.define
class RecordingLLM(FakeLLM):
    """A FakeLLM that checks every request's history holds matching call/result pairs."""

    async def stream_reply(self, messages, deltas, **kwargs):
        check_pairs([m for m in messages if m.role != "system"])
        return await super().stream_reply(messages, deltas, **kwargs)


def script(kinds: list[str]) -> list[list]:
    steps = []
    for n, kind in enumerate(kinds):
        client = ToolCall(call_id=f"c{n}", name="get_weather", arguments='{"city": "Paris"}')
        server = ToolCall(call_id=f"s{n}", name="get_time", arguments="{}")
        steps.append(
            {
                "speak": [REPLY],
                "client": [client],
                "server": [server],
                "both": [client, server],
                "preamble_client": [PREAMBLE, client],
            }[kind]
        )
    return steps


def check_log(log: list) -> None:
    """Framing, barge-in and status invariants, with tool calls, over all the client received."""
    open_turn, interrupted, done = None, set(), set()
    for item in log:
        if isinstance(item, bytes):
            assert open_turn is not None, "audio outside a response"
            assert open_turn not in interrupted, "audio after response.interrupted"
            continue
        turn_id = getattr(item, "turn_id", None)
        if item.TYPE != "error":
            assert turn_id not in done, f"{item.TYPE} after its response.done"
        if item.TYPE == "response.created":
            assert open_turn is None
            open_turn = turn_id
        elif item.TYPE in ("response.tool_call", "response.tool_call.delta", "response.text.delta"):
            assert turn_id == open_turn and turn_id not in interrupted, item
        elif item.TYPE == "response.interrupted":
            assert turn_id == open_turn
            interrupted.add(turn_id)
        elif item.TYPE == "response.done":
            assert turn_id == open_turn
            assert (item.status == "interrupted") == (turn_id in interrupted)
            done.add(turn_id)
            open_turn = None
        elif item.TYPE == "error":
            assert item.code in (
                "no_active_response",
                "busy",
                "input_audio_buffer_empty",
                "no_speech",
                "unknown_tool_call",
                "tool_call_timeout",
            ), item


def check_history(session) -> None:
    """Matching pairs; the assistant's words only what was heard (prefixes of what it said)."""
    messages = session.conversation.messages
    check_pairs(messages)
    for message in messages:
        if message.role == "assistant" and message.content:
            assert REPLY.startswith(message.content) or PREAMBLE.startswith(message.content), message.content


async def run_scenario(actions, kinds) -> None:
    llm = RecordingLLM(first_delay=0.1, delta_delay=0.05, steps=script(kinds))
    tools = CheckedServerTools(results={"get_time": "noon"}, delay=2.0)
    engines = fake_engines(stt=FakeSTT(delay=0.15), llm=llm, tts=FakeTTS(delay=0.1), tools=tools)
    big_history = SessionSettings(history_max_messages=10_000, history_max_chars=10**7, tool_call_timeout_s=20.0)
    async with connected(engines, big_history) as client:
        tools.session = client.session
        await client.send({"type": "session.update", "session": {"tools": [WEATHER]}})
        await client.until("session.updated")
        await trio.testing.wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        answered: list[str] = []
        sent: dict[str, str] = {}  # call id -> the output sent first
        bogus = 0
        for kind, amount in [("text", 0), *actions]:  # (a first turn, so every example has one)
            asked = [e.call_id for e in client.events("response.tool_call") if e.call_id not in answered]
            if kind in ("speech", "silence"):
                await stream(client, (kind, amount))
            elif kind == "text":
                await client.send({"type": "input_text", "text": "typed question"})
            elif kind == "cancel":
                await client.send({"type": "response.cancel"})
            elif kind == "answer" and asked:
                answered.append(asked[0])
                sent[asked[0]] = f"out-{asked[0]}"
                await client.send({"type": "tool_call.output", "call_id": asked[0], "output": sent[asked[0]]})
            elif kind == "answer_again" and answered:
                await client.send({"type": "tool_call.output", "call_id": answered[-1], "output": "again"})
            elif kind == "bogus":
                bogus += 1
                await client.send({"type": "tool_call.output", "call_id": "no_such_call", "output": "x"})
            elif kind == "history":  # (an assistant's words injected are words it said: a prefix)
                await client.send({"type": "history.add", "role": amount, "text": "Sure thing."})
            elif kind == "modality":
                await client.send({"type": "session.update", "session": {"output_modalities": [amount]}})
            else:
                await trio.sleep(amount / 1000)
            await trio.testing.wait_all_tasks_blocked()
            check_log(client.log)
            check_history(client.session)
            assert tools.violations == []
        # Let everything finish: silence ends any utterance, calls time out, responses play out.
        await stream(client, ("silence", 1000))
        await trio.sleep(60)
        await trio.testing.wait_all_tasks_blocked()
        check_log(client.log)
        check_history(client.session)
        assert tools.violations == []
        assert len(client.events("response.done")) == len(client.events("response.created"))
        assert client.session._unfinished == []
        assert count_tasks() == idle_tasks
        unknown = [e for e in client.events("error") if e.code == "unknown_tool_call"]
        assert len(unknown) >= bogus
        # The history holds every call that started, once, with its result or a placeholder,
        # and no call that never started.
        messages = client.session.conversation.messages
        calls = [c.call_id for m in messages for c in m.tool_calls]
        results = {m.tool_call_id: m.content for m in messages if m.role == "tool"}
        asked_ids = [e.call_id for e in client.events("response.tool_call")]
        assert len(calls) == len(set(calls))
        client_calls = [c for c in calls if c.startswith("c")]
        assert sorted(client_calls) == sorted(asked_ids)
        started_server = [name for name, _ in tools.calls]
        assert len([c for c in calls if c.startswith("s")]) == len(started_server)
        for call_id in client_calls:
            result = results[call_id]
            if call_id in sent:
                assert result in (sent[call_id], LATE_RESULT_PREFIX + sent[call_id]) or result.startswith("[no result")
            else:
                assert result.startswith("[no result")
        # (shown by --hypothesis-show-statistics: what the examples exercised)
        event(f"client calls asked: {min(len(asked_ids), 3)}+")
        event(f"late results: {sum(r.startswith(LATE_RESULT_PREFIX) for r in results.values()) > 0}")
        event(f"server calls cancelled: {len(tools.cancelled) > 0}")
        event(f"statuses: {sorted({e.status for e in client.events('response.done')})}")
        for call_id in calls:
            if call_id.startswith("s"):
                assert results[call_id] in ("noon",) or results[call_id].startswith("[no result")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ACTIONS, min_size=1, max_size=25), st.lists(STEPS, min_size=30, max_size=30))
def test_random_interleavings_with_tool_calls_keep_every_invariant(actions, kinds):
    trio.run(run_scenario, actions, kinds, clock=trio.testing.MockClock(autojump_threshold=0))
