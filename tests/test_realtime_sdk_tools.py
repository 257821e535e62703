"""Function calling, text-only replies and history injection on ``/v1/realtime``, driven by the
official openai SDK's realtime client against a real ``voiceorch serve --fake-engines
--llm-url`` whose LLM is the fake OpenAI-compatible server, scripted (to call a tool, in the
real wire format); STT and TTS are the canned fakes. The SDK's models validate every frame
(realtime_harness.checked)."""

from __future__ import annotations

import json

import pytest

from fake_openai_server import FakeOpenAIServer, serving_in_thread, tool_call_pieces
from real_server import start_server
from realtime_harness import Events, deadline, sdk_client

TOKEN = "realtime-tools-token"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def llm():
    fake = FakeOpenAIServer()
    with serving_in_thread(fake) as base_url:
        yield fake, base_url


@pytest.fixture(scope="module")
def server(llm):
    running = start_server("--fake-engines", "--llm-url", llm[1], "--auth-token", TOKEN)
    yield running
    assert running.stop() == 0


def test_a_function_call_and_its_output_through_the_sdk(server, llm):
    fake, _ = llm
    fake.script = [
        ["Let me check. ", *tool_call_pieces(0, "call_w", "get_weather", '{"city": "Paris"}', parts=3)],
        ["It is sunny ", "in Paris."],
    ]
    fake.requests.clear()
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(session={"type": "realtime", "tools": [WEATHER], "tool_choice": "auto"})
        updated = events.until("session.updated")
        assert [tool.name for tool in updated.session.tools] == ["get_weather"]
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}
        )
        connection.response.create()
        first = events.until("response.done")
        message, call = first.response.output
        assert first.response.status == "completed"
        assert message.type == "message" and message.content[0].transcript == "Let me check. "
        assert (call.type, call.name, call.call_id, call.status) == (
            "function_call",
            "get_weather",
            "call_w",
            "completed",
        )
        assert json.loads(call.arguments) == {"city": "Paris"}
        deltas = events.of_type("response.function_call_arguments.delta")
        assert "".join(d.delta for d in deltas) == call.arguments and {d.item_id for d in deltas} == {call.id}
        [arguments_done] = events.of_type("response.function_call_arguments.done")
        assert (arguments_done.call_id, arguments_done.arguments) == ("call_w", call.arguments)

        connection.conversation.item.create(
            item={"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "clear"}'}
        )
        connection.response.create()
        created = events.until("response.created")
        second = events.until("response.done")
    assert second.response.id == created.response.id != first.response.id
    assert second.response.status == "completed"
    [answer] = second.response.output
    assert answer.content[0].transcript == "It is sunny in Paris."
    assert not events.of_type("error")
    # The LLM got the tool offered, then the call and its result.
    assert fake.requests[0]["tools"][0]["function"]["name"] == "get_weather"
    messages = fake.requests[1]["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == "call_w"
    assert messages[-1] == {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_w"}


def test_a_text_only_session_through_the_sdk(server, llm):
    fake, _ = llm
    fake.script = [["Hello ", "there."]]
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        assert events.until("session.updated").session.output_modalities == ["text"]
        connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}
        )
        connection.response.create()
        done = events.until("response.done")
    assert done.response.status == "completed" and done.response.output_modalities == ["text"]
    [message] = done.response.output
    assert message.content[0].type == "output_text" and message.content[0].text == "Hello there."
    assert "".join(e.delta for e in events.of_type("response.output_text.delta")) == "Hello there."
    assert events.of_type("response.output_audio.delta") == []


def test_history_injection_through_the_sdk(server, llm):
    fake, _ = llm
    fake.script = [["Your name ", "is Ada."]]
    fake.requests.clear()
    with sdk_client(server, TOKEN).realtime.connect(model="gpt-realtime") as connection, deadline(connection, 60):
        events = Events(connection)
        events.until("session.created")
        for role, kind, text in [
            ("system", "input_text", "The user is in Paris."),
            ("user", "input_text", "My name is Ada."),
            ("assistant", "output_text", "Nice to meet you, Ada."),
            ("user", "input_text", "What is my name?"),
        ]:
            connection.conversation.item.create(
                item={"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
            )
            assert events.until("conversation.item.done").item.role == role
        connection.response.create()
        done = events.until("response.done")
    assert done.response.status == "completed"
    assert [(m["role"], m["content"]) for m in fake.requests[0]["messages"][1:]] == [
        ("system", "The user is in Paris."),
        ("user", "My name is Ada."),
        ("assistant", "Nice to meet you, Ada."),
        ("user", "What is my name?"),
    ]
