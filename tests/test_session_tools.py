"""Function calling through a session (protocol v1) with fake engines, under Trio's MockClock.

The LLM is a FakeLLM scripted with tool calls; server-side tools are a FakeServerTools.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from session_harness import check_framing, connected, count_tasks, fake_engines
from voiceorch import protocol as p
from voiceorch.engines.base import ToolCall
from voiceorch.engines.fakes import FakeLLM, FakeServerTools, fake_pcm
from voiceorch.session import SessionSettings
from voiceorch.session.history import LATE_RESULT_PREFIX

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"type": "function", "name": "get_time"}
CALL_W = ToolCall(call_id="call_w", name="get_weather", arguments='{"city": "Paris"}')
CALL_T = ToolCall(call_id="call_t", name="get_time", arguments="{}")
FINAL = "It is sunny in Paris."


async def declare_tools(client, *tools, **extra) -> p.SessionUpdated:
    await client.send({"type": "session.update", "session": {"tools": list(tools), **extra}})
    return await client.until("session.updated")


def kinds(log) -> list[str]:
    return ["audio" if isinstance(e, bytes) else e.TYPE for e in log]


def check_pairs(messages) -> None:
    """Every call in the history is followed by exactly its results, and no result is alone."""
    waiting: list[str] = []
    for message in messages:
        if message.role == "tool":
            assert message.tool_call_id == waiting.pop(0)
        else:
            assert not waiting, f"calls {waiting} have no result"
            waiting = [call.call_id for call in message.tool_calls]
    assert not waiting


async def test_a_client_call_is_answered_and_the_reply_goes_on_in_the_same_turn(autojump_clock):
    llm = FakeLLM(steps=[["Let me check.", CALL_W], [FINAL]])
    engines = fake_engines(llm=llm)
    async with connected(engines) as client:
        updated = await declare_tools(client, WEATHER, tool_choice="required")
        assert [t.name for t in updated.session.tools] == ["get_weather"]
        assert updated.session.tool_choice == "required"
        await client.send({"type": "input_text", "text": "Weather in Paris?"})
        while not isinstance(await client.next(), bytes):
            pass
        first_audio_at = trio.current_time()
        call = await client.until("response.tool_call")
        asked_at = trio.current_time()
        await client.send({"type": "tool_call.output", "call_id": call.call_id, "output": '{"sky": "clear"}'})
        done = await client.until("response.done")
    assert (call.call_id, call.name, call.arguments) == ("call_w", "get_weather", '{"city": "Paris"}')
    deltas = client.events("response.tool_call.delta")
    assert len(deltas) == 2 and "".join(d.delta for d in deltas) == CALL_W.arguments
    assert all(d.call_id == "call_w" and d.name == "get_weather" for d in deltas)
    assert done.status == "completed"
    assert done.text == "Let me check. " + FINAL
    check_framing(client.log)
    # The words before the call were all sent, and played, before the client was asked to run it.
    asked = kinds(client.log).index("response.tool_call")
    before = b"".join(e for e in client.log[:asked] if isinstance(e, bytes))
    assert before == fake_pcm("Let me check.", 60.0)
    assert asked_at >= first_audio_at + len(before) / 32 / 1000
    assert engines.tts.texts == ["Let me check.", "It is sunny in Paris."]
    # The second request carries the call and its result; the first forced a call, the next did not.
    assert llm.tools == [["get_weather"], ["get_weather"]]
    second = llm.requests[1]
    assert second[-2].role == "assistant" and second[-2].tool_calls == (CALL_W,)
    assert second[-2].content == "Let me check."
    assert second[-1].role == "tool" and second[-1].content == '{"sky": "clear"}'
    history = client.session.conversation.messages
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    assert history[-1].content == FINAL
    check_pairs(history)


async def test_several_calls_in_one_step_and_several_steps(autojump_clock):
    llm = FakeLLM(steps=[[CALL_W, CALL_T], [ToolCall(call_id="call_2", name="get_time", arguments="{}")], [FINAL]])
    async with connected(fake_engines(llm=llm)) as client:
        await declare_tools(client, WEATHER, TIME)
        await client.send({"type": "input_text", "text": "Weather and time?"})
        first = await client.until("response.tool_call")
        second = await client.until("response.tool_call")
        assert {first.call_id, second.call_id} == {"call_w", "call_t"}
        await client.send({"type": "tool_call.output", "call_id": "call_t", "output": "noon"})
        await wait_all_tasks_blocked()
        assert len(llm.requests) == 1  # one output of two: the LLM waits for both
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "sunny"})
        third = await client.until("response.tool_call")
        assert third.call_id == "call_2"
        await client.send({"type": "tool_call.output", "call_id": "call_2", "output": "12:01"})
        done = await client.until("response.done")
    assert done.status == "completed" and done.text == FINAL
    assert len(llm.requests) == 3
    last = llm.requests[2]
    # Results in the order of the calls, whatever order they came in.
    assert [(m.role, m.tool_call_id, m.content) for m in last[-5:]] == [
        ("assistant", None, ""),
        ("tool", "call_w", "sunny"),
        ("tool", "call_t", "noon"),
        ("assistant", None, ""),
        ("tool", "call_2", "12:01"),
    ]
    check_pairs(client.session.conversation.messages)


async def test_an_output_for_an_unknown_or_answered_call_is_an_error_and_changes_nothing(autojump_clock):
    llm = FakeLLM(steps=[[CALL_W], [FINAL]])
    async with connected(fake_engines(llm=llm)) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "tool_call.output", "call_id": "call_nope", "output": "x"})
        error = await client.until("error")
        assert error.code == "unknown_tool_call" and "call_nope" in error.message
        await client.send({"type": "input_text", "text": "Weather?"})
        await client.until("response.tool_call")
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "sunny"})
        await client.until("response.done")
        before = client.session.conversation.messages
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "again"})
        error = await client.until("error")
        assert error.code == "unknown_tool_call"
        await trio.sleep(5)
    assert client.session.conversation.messages == before
    assert len(client.events("response.created")) == 1 and len(llm.requests) == 2


async def test_a_client_that_never_answers_fails_the_turn_and_a_late_output_is_recorded_as_such(autojump_clock):
    llm = FakeLLM(steps=[[CALL_W], [FINAL]])
    settings = SessionSettings(turn_detection=p.TurnDetection(type="none"), tool_call_timeout_s=5.0)
    async with connected(fake_engines(llm=llm), settings) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "input_text", "text": "Weather?"})
        await client.until("response.tool_call")
        called_at = trio.current_time()
        error = await client.until("error")
        done = await client.until("response.done")
        assert trio.current_time() - called_at == pytest.approx(5.0, abs=0.1)
        assert error.code == "tool_call_timeout" and "call_w" in error.message
        assert done.status == "failed"
        history = client.session.conversation.messages
        check_pairs(history)
        assert history[-1].role == "tool" and "did not answer" in history[-1].content
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "sunny"})
        await trio.sleep(5)
        assert client.session.conversation.messages[-1].content == LATE_RESULT_PREFIX + "sunny"
        assert len(client.events("error")) == 1  # a late output is no error ...
        assert len(client.events("response.created")) == 1  # ... and makes no one speak
        assert len(llm.requests) == 1


async def test_a_call_of_a_response_cancelled_before_the_call_starts_never_starts(autojump_clock):
    tools = FakeServerTools(results={"hang_up": "done"})
    # The words before the call take a while to play; the cancel comes while they play.
    llm = FakeLLM(
        steps=[["Goodbye then, talk to you soon.", CALL_W, ToolCall(call_id="s", name="hang_up", arguments="{}")]]
    )
    async with connected(fake_engines(llm=llm, tools=tools)) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "input_text", "text": "Bye"})
        await client.until("response.tool_call.delta")
        await client.next()  # some audio
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
        await trio.sleep(5)
    assert done.status == "cancelled"
    assert client.events("response.tool_call") == []
    assert tools.calls == []
    history = client.session.conversation.messages
    assert all(not m.tool_calls and m.role != "tool" for m in history)
    check_pairs(history)


async def test_a_cancelled_pending_client_call_gets_a_placeholder_then_its_late_output(autojump_clock):
    llm = FakeLLM(steps=[[CALL_W], [FINAL]])
    async with connected(fake_engines(llm=llm)) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "input_text", "text": "Weather?"})
        await client.until("response.tool_call")
        await client.send({"type": "response.cancel"})
        # The output comes while the response is ending, or after: either way it is late.
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "sunny"})
        done = await client.until("response.done")
        await trio.sleep(5)
    assert done.status == "cancelled"
    assert client.events("error") == []
    history = client.session.conversation.messages
    check_pairs(history)
    assert history[-1].role == "tool" and history[-1].content == LATE_RESULT_PREFIX + "sunny"
    assert len(llm.requests) == 1  # the result never made the assistant speak


async def test_server_tools_run_on_the_server_and_their_calls_are_not_sent_to_the_client(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=0.5)
    llm = FakeLLM(steps=[[CALL_T, ToolCall(call_id="call_x", name="missing_tool", arguments="{}")], [FINAL]])
    async with connected(fake_engines(llm=llm, tools=tools)) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "input_text", "text": "Time?"})
        call = await client.until("response.tool_call")  # an unknown name goes to the client
        assert call.name == "missing_tool"
        await client.send({"type": "tool_call.output", "call_id": "call_x", "output": "no such tool"})
        done = await client.until("response.done")
    assert done.status == "completed"
    assert tools.calls == [("get_time", "{}")]
    assert all(e.name != "get_time" for e in client.events("response.tool_call.delta"))
    assert llm.tools[0] == ["get_weather", "get_time"]
    assert [m.content for m in llm.requests[1] if m.role == "tool"] == ["noon", "no such tool"]
    check_pairs(client.session.conversation.messages)


async def test_a_running_server_call_is_cancelled_with_the_turn(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=10)
    llm = FakeLLM(steps=[[CALL_T], [FINAL]])
    async with connected(fake_engines(llm=llm, tools=tools)) as client:
        await client.send({"type": "input_text", "text": "Time?"})
        await trio.sleep(3)
        assert tools.calls == [("get_time", "{}")]
        idle = count_tasks()
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
        await wait_all_tasks_blocked()
        assert count_tasks() < idle
    assert done.status == "cancelled"
    assert tools.cancelled == ["get_time"] and tools.finished == []
    history = client.session.conversation.messages
    check_pairs(history)
    assert history[-1].role == "tool" and history[-1].content.startswith("[no result")
    assert len(llm.requests) == 1


async def test_a_server_tool_that_times_out_gives_the_llm_an_error_result(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=100)
    llm = FakeLLM(steps=[[CALL_T], [FINAL]])
    settings = SessionSettings(turn_detection=p.TurnDetection(type="none"), tool_call_timeout_s=2.0)
    async with connected(fake_engines(llm=llm, tools=tools), settings) as client:
        await client.send({"type": "input_text", "text": "Time?"})
        done = await client.until("response.done")
    assert done.status == "completed" and done.text == FINAL
    assert llm.requests[1][-1].content == "Error: the tool took longer than 2 s"


async def test_a_reply_that_keeps_calling_tools_fails_at_the_step_limit(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=0.1)
    llm = FakeLLM(steps=[[ToolCall(call_id=f"c{i}", name="get_time", arguments="{}")] for i in range(10)])
    settings = SessionSettings(turn_detection=p.TurnDetection(type="none"), max_tool_steps=3)
    async with connected(fake_engines(llm=llm, tools=tools), settings) as client:
        await client.send({"type": "input_text", "text": "Time?"})
        error = await client.until("error")
        done = await client.until("response.done")
    assert error.code == "tool_loop_limit" and done.status == "failed"
    assert len(llm.requests) == 3 and len(tools.calls) == 2
    check_pairs(client.session.conversation.messages)


async def test_a_tool_named_as_one_of_the_servers_is_refused(autojump_clock):
    engines = fake_engines(tools=FakeServerTools(results={"hang_up": "done"}))
    async with connected(engines) as client:
        await client.send({"type": "session.update", "session": {"tools": [{"type": "function", "name": "hang_up"}]}})
        error = await client.until("error")
    assert error.code == "tool_name_taken" and "['hang_up']" in error.message
    assert client.session.config.tools == ()


@pytest.mark.parametrize(
    "session, message",
    [
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tool name"),
        ({"tools": [TIME, TIME]}, "unique"),
        ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "string"}}]}, "JSON Schema of an object"),
        ({"tools": [{"type": "function", "name": "f", "parameters": [1]}]}, "parameters"),
        ({"tools": [{"type": "code", "name": "f"}]}, "type"),
        ({"tools": [TIME], "tool_choice": "get_weather"}, "tool_choice"),
        ({"tools": "get_time"}, "tools"),
    ],
)
async def test_bad_tools_are_refused_with_a_clear_error_and_change_nothing(autojump_clock, session, message):
    engines = fake_engines(tools=FakeServerTools(results={"hang_up": "done"}))
    async with connected(engines) as client:
        await declare_tools(client, WEATHER)
        await client.send({"type": "session.update", "session": session})
        error = await client.until("error")
        assert error.code == "invalid_event"
        assert message in error.message, error.message
        assert [t.name for t in client.session.config.tools] == ["get_weather"]


async def test_a_call_of_no_tool_when_the_client_declared_none_gets_an_error_result_at_once(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"})
    llm = FakeLLM(steps=[[ToolCall(call_id="x", name="hang_up", arguments="{}")], [FINAL]])
    async with connected(fake_engines(llm=llm, tools=tools)) as client:
        await client.send({"type": "input_text", "text": "Bye"})
        done = await client.until("response.done")
    assert done.status == "completed" and done.text == FINAL
    assert client.events("response.tool_call") == [] and client.events("response.tool_call.delta") == []
    assert llm.requests[1][-1].content == "Error: there is no tool named 'hang_up'"
    check_pairs(client.session.conversation.messages)


async def test_text_only_replies_send_no_audio_and_remember_the_text(autojump_clock):
    reply = "Sure thing. Here is a short answer. Anything else?"
    llm = FakeLLM(steps=[["Let me check.", CALL_W], [reply]])
    engines = fake_engines(llm=llm)
    async with connected(engines) as client:
        await client.send({"type": "session.update", "session": {"output_modalities": ["text"], "tools": [WEATHER]}})
        updated = await client.until("session.updated")
        assert updated.session.output_modalities == ("text",)
        await client.send({"type": "input_text", "text": "Weather?"})
        await client.until("response.tool_call")
        await client.send({"type": "tool_call.output", "call_id": "call_w", "output": "sunny"})
        done = await client.until("response.done")
        await client.send({"type": "session.update", "session": {"output_modalities": ["audio", "text"]}})
        error = await client.until("error")
    assert not any(isinstance(item, bytes) for item in client.log)
    assert engines.tts.texts == []
    assert done.status == "completed" and done.text == "Let me check. " + reply
    assert done.metrics.audio_ms == 0 and done.metrics.ttfb_ms is None
    history = client.session.conversation.messages
    assert [(m.role, m.content) for m in history if m.role != "tool"] == [
        ("user", "Weather?"),
        ("assistant", "Let me check."),
        ("assistant", reply),
    ]
    assert error.code == "invalid_event" and "output_modalities" in error.message


async def test_a_text_only_reply_cancelled_midway_remembers_the_sentences_sent(autojump_clock):
    llm = FakeLLM(delta_delay=1.0)  # "Sure thing. Here is a short answer. Anything else?" a word a second
    async with connected(fake_engines(llm=llm)) as client:
        await client.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
        await client.send({"type": "input_text", "text": "Hi"})
        await trio.sleep(4.5)  # "Sure thing. Here is a" sent
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
    assert done.status == "cancelled" and done.text == "Sure thing."
    assert client.session.conversation.messages[-1].content == "Sure thing."


async def test_history_add_puts_messages_in_the_memory_without_a_response(autojump_clock):
    llm = FakeLLM()
    async with connected(fake_engines(llm=llm)) as client:
        await client.send({"type": "history.add", "role": "user", "text": "My name is Ada."})
        await client.send({"type": "history.add", "role": "assistant", "text": "Nice to meet you, Ada."})
        await client.send({"type": "history.add", "role": "system", "text": "The user is in Paris."})
        await client.send({"type": "history.add", "role": "user", "text": "   "})
        error = await client.until("error")
        await client.send({"type": "history.add", "role": "tool", "text": "x"})
        bad_role = await client.until("error")
        await wait_all_tasks_blocked()
        assert client.events("response.created") == []
        await client.send({"type": "input_text", "text": "What is my name?"})
        await client.until("response.done")
    assert error.code == "invalid_event" and "history.add" in error.message
    assert bad_role.code == "invalid_event" and "role" in bad_role.message
    assert [(m.role, m.content) for m in llm.requests[0][1:]] == [
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada."),
        ("system", "The user is in Paris."),
        ("user", "What is my name?"),
    ]


async def test_a_filler_is_said_while_the_calls_of_a_silent_step_run(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=3.0)
    llm = FakeLLM(steps=[[CALL_T], [ToolCall(call_id="t2", name="get_time", arguments="{}")], [FINAL]])
    settings = SessionSettings(turn_detection=p.TurnDetection(type="none"), tool_filler="One moment.")
    engines = fake_engines(llm=llm, tools=tools)
    async with connected(engines, settings) as client:
        await client.send({"type": "input_text", "text": "Time?"})
        done = await client.until("response.done")
    assert done.status == "completed"
    assert engines.tts.texts == ["One moment.", "It is sunny in Paris."]  # once a turn
    assert done.text == "One moment. " + FINAL
    audio = b"".join(item for item in client.log if isinstance(item, bytes))
    assert audio == fake_pcm("One moment.", 60.0) + fake_pcm(FINAL, 60.0)  # one after the other, whole
    deltas = "".join(e.delta for e in client.events("response.text.delta"))
    assert deltas == "One moment. " + FINAL
    # The filler is not the LLM's: its requests never have it.
    assert all("One moment" not in m.content for m in llm.requests[2])
    check_framing(client.log)


async def test_a_filler_that_outlasts_the_reply_is_played_before_the_response_ends(autojump_clock):
    tools = FakeServerTools(results={"get_time": "noon"}, delay=0.01)
    llm = FakeLLM(steps=[[CALL_T], []], first_delay=0.01)  # the answer says nothing
    settings = SessionSettings(turn_detection=p.TurnDetection(type="none"), tool_filler="One moment please.")
    async with connected(fake_engines(llm=llm, tools=tools), settings) as client:
        await client.send({"type": "input_text", "text": "Time?"})
        while not isinstance(await client.next(), bytes):
            pass
        first_audio = trio.current_time()
        done = await client.until("response.done")
    filler_s = len(fake_pcm("One moment please.", 60.0)) / 32 / 1000
    assert trio.current_time() - first_audio >= filler_s - 0.05
    assert done.status == "completed" and done.text == "One moment please."
