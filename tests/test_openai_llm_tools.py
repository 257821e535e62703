"""OpenAICompatibleLLM's tool calling against the fake OpenAI-compatible server, whose scripted
replies stream ``tool_calls`` in the real wire format (split across chunks).

Loopback only, port 0; every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from fake_openai_server import FakeOpenAIServer, tool_call_pieces
from voiceorch.engines.base import ChatMessage, EngineError, ReplyDelta, ToolCall, ToolCallDelta
from voiceorch.engines.openai_llm import OpenAICompatibleLLM
from voiceorch.engines.tools import ToolSpec

TIMEOUT = 10
WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec(name="get_time")
MESSAGES = [ChatMessage(role="user", content="Weather in Paris and the time?")]


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAIServer:
    server = FakeOpenAIServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def llm(fake: FakeOpenAIServer) -> AsyncIterator[OpenAICompatibleLLM]:
    engine = OpenAICompatibleLLM(base_url=fake.base_url, read_timeout=5.0)
    try:
        yield engine
    finally:
        await engine.aclose()


async def collect(llm: OpenAICompatibleLLM, messages=MESSAGES, **kwargs) -> tuple[list[ReplyDelta], str | None]:
    send, receive = trio.open_memory_channel[ReplyDelta](64)
    reason = await llm.stream_reply(messages, send, **kwargs)
    return [item async for item in receive], reason


def assembled(items: list[ReplyDelta]) -> tuple[str, list[ToolCall]]:
    text = "".join(item for item in items if isinstance(item, str))
    calls: dict[int, ToolCall] = {}
    for item in items:
        if isinstance(item, ToolCallDelta):
            known = calls.get(item.index) or ToolCall(call_id=item.call_id, name=item.name, arguments="")
            assert (known.call_id, known.name) == (item.call_id, item.name)
            calls[item.index] = ToolCall(
                call_id=item.call_id, name=item.name, arguments=known.arguments + item.arguments
            )
    return text, [calls[i] for i in sorted(calls)]


async def test_tools_are_offered_in_the_request_and_absent_without_them(fake, llm) -> None:
    with trio.fail_after(TIMEOUT):
        await collect(llm, tools=[WEATHER, TIME], tool_choice="required")
        await collect(llm)
        await collect(llm, tools=[WEATHER], tool_choice="get_weather")
    with_tools, without, forced = fake.requests
    assert with_tools["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER.parameters,
            },
        },
        {
            "type": "function",
            "function": {"name": "get_time", "description": "", "parameters": {"type": "object", "properties": {}}},
        },
    ]
    assert with_tools["tool_choice"] == "required"
    assert "tools" not in without and "tool_choice" not in without
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_mixed_text_and_two_interleaved_calls_split_across_chunks(fake, llm) -> None:
    weather = tool_call_pieces(0, "call_w", "get_weather", '{"city": "Paris"}', parts=4)
    time = tool_call_pieces(1, "call_t", "get_time", "{}", parts=2)
    # Text first, then the two calls' pieces interleaved, as a server streaming in parallel may.
    fake.script = [["Let me", " check."] + [p for pair in zip(weather, time + [[], []]) for p in pair if p]]
    with trio.fail_after(TIMEOUT):
        items, reason = await collect(llm, tools=[WEATHER, TIME])
    text, calls = assembled(items)
    assert reason == "tool_calls"
    assert text == "Let me check."
    assert calls == [
        ToolCall(call_id="call_w", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(call_id="call_t", name="get_time", arguments="{}"),
    ]
    # The text came before any piece of a call.
    assert all(isinstance(item, str) for item in items[:2])


async def test_a_call_without_an_id_gets_one_and_pieces_before_the_name_are_held(fake, llm) -> None:
    fake.script = [
        [
            [{"index": 0, "function": {"arguments": '{"ci'}}],  # arguments before the name: held back
            [{"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": 'ty": "Oslo"}'}}],
        ]
    ]
    with trio.fail_after(TIMEOUT):
        items, _ = await collect(llm, tools=[WEATHER])
    _, calls = assembled(items)
    assert len(calls) == 1
    assert calls[0].name == "get_weather" and calls[0].arguments == '{"city": "Oslo"}'
    assert calls[0].call_id.startswith("call_")


async def test_history_with_calls_and_results_is_sent_in_the_wire_format(fake, llm) -> None:
    call = ToolCall(call_id="call_1", name="get_weather", arguments='{"city": "Paris"}')
    messages = [
        ChatMessage(role="user", content="Weather?"),
        ChatMessage(role="assistant", content="", tool_calls=(call,)),
        ChatMessage(role="tool", content='{"sky": "clear"}', tool_call_id="call_1"),
    ]
    with trio.fail_after(TIMEOUT):
        await collect(llm, messages, tools=[WEATHER])
    assert fake.requests[0]["messages"] == [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_1"},
    ]


async def test_a_malformed_tool_call_piece_is_a_bad_response(fake, llm) -> None:
    fake.script = [[[{"index": "zero", "function": {"name": "x"}}]]]
    send, _receive = trio.open_memory_channel[ReplyDelta](16)
    with trio.fail_after(TIMEOUT), pytest.raises(EngineError) as info:
        await llm.stream_reply(MESSAGES, send, tools=[WEATHER])
    assert info.value.code == "llm_bad_response"
