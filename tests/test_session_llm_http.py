"""A session whose LLM is the real HTTP client, against a fake OpenAI-compatible server on
loopback (real sockets, so real time: each test is bounded with fail_after)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from fake_openai_server import FakeOpenAIServer, tool_call_pieces
from session_harness import connected, fake_engines
from voiceorch.engines.openai_llm import OpenAICompatibleLLM


@asynccontextmanager
async def session_with_http_llm(server: FakeOpenAIServer, **llm_options):
    """Serve ``server`` on loopback; yield a session client whose LLM is the HTTP client."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            llm = OpenAICompatibleLLM(base_url=await nursery.start(server.serve), **llm_options)
            async with connected(fake_engines(llm=llm)) as client:
                yield client
            await llm.aclose()
            nursery.cancel_scope.cancel()


async def test_the_reply_streams_from_the_http_llm_and_the_history_goes_with_the_next_request():
    server = FakeOpenAIServer(deltas=["Paris is ", "the capital. ", "It is in France."])
    async with session_with_http_llm(server) as client:
        await client.send({"type": "input_text", "text": "Where is Paris?"})
        first = await client.until("response.done")
        await client.send({"type": "input_text", "text": "And Rome?"})
        second = await client.until("response.done")
    assert first.status == second.status == "completed"
    assert first.text == "Paris is the capital. It is in France."
    messages = server.requests[1]["messages"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("user", "Where is Paris?"),
        ("assistant", "Paris is the capital. It is in France."),
        ("user", "And Rome?"),
    ]
    assert all(r["stream"] is True for r in server.requests)


@pytest.mark.parametrize(
    "mode, code",
    [
        ("error500", "llm_error"),
        ("malformed", "llm_bad_response"),
        ("drop", "llm_bad_response"),
        ("stall", "llm_timeout"),  # one delta, then silence past read_timeout
        ("keepalive", "llm_timeout"),  # up but sends no text within first_token_timeout
    ],
)
async def test_a_failing_llm_server_gives_an_error_event_and_the_session_stays_usable(mode, code):
    server = FakeOpenAIServer(mode=mode)
    async with session_with_http_llm(server, read_timeout=1.0, first_token_timeout=1.0) as client:
        await client.send({"type": "input_text", "text": "hello?"})
        error = await client.until("error")
        failed = await client.until("response.done")
        server.mode = "stream"  # the backend is back
        await client.send({"type": "input_text", "text": "hello again"})
        done = await client.until("response.done")
    assert error.code == code and error.turn_id == failed.turn_id, error
    assert failed.status == "failed"
    assert done.status == "completed" and done.text == "Hello, world!"
    # A failed turn stays in the history only with what the user heard of it (here: nothing
    # was synthesized and played before the failure, or just the first word).
    history = [m["content"] for m in server.requests[-1]["messages"][1:]]
    assert history[-1] == "hello again"
    assert history[:-1] in ([], ["hello?", failed.text]), history


async def test_an_llm_server_that_is_down_gives_llm_unavailable_then_recovers():
    server = FakeOpenAIServer()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            llm = OpenAICompatibleLLM(base_url="http://127.0.0.1:9/v1", connect_timeout=1.0)  # nothing listens
            async with connected(fake_engines(llm=llm)) as client:
                await client.send({"type": "input_text", "text": "anyone there?"})
                error = await client.until("error")
                failed = await client.until("response.done")
                llm.base_url = await nursery.start(server.serve)  # the backend is back
                await client.send({"type": "input_text", "text": "now?"})
                done = await client.until("response.done")
            await llm.aclose()
            nursery.cancel_scope.cancel()
    assert (error.code, failed.status, done.status) == ("llm_unavailable", "failed", "completed")


async def test_cancelling_a_response_closes_the_http_stream():
    server = FakeOpenAIServer(deltas=[f"word{i} " for i in range(200)], delay=0.05)
    async with session_with_http_llm(server) as client:
        await client.send({"type": "input_text", "text": "talk"})
        await client.until("response.text.delta")
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
        await server.client_disconnected.wait()
    assert done.status == "cancelled"


async def test_the_http_request_and_its_slot_end_when_generation_ends_not_when_the_audio_has_played():
    # 30 sentences: far more than the channels between the LLM and the audio used to hold, so
    # the stream was held open by the paced audio until most of the reply had played.
    server = FakeOpenAIServer(deltas=[f"This is sentence {i}. " for i in range(30)])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            llm = OpenAICompatibleLLM(base_url=await nursery.start(server.serve), max_concurrent_requests=1)
            async with connected(fake_engines(llm=llm)) as client:
                await client.send({"type": "input_text", "text": "Tell me a long story."})
                while not isinstance(await client.next(), bytes):
                    pass  # up to the first audio frame
                with trio.fail_after(5):  # (the reply's audio lasts about 45 s)
                    while llm.limiter.statistics().borrowed_tokens:
                        await trio.sleep(0.01)
                texts = [e.delta for e in client.events("response.text.delta")]
                assert len(texts) == 30  # the whole reply was read while its audio had just begun
                await client.send({"type": "response.cancel"})
                done = await client.until("response.done")
            await llm.aclose()
            nursery.cancel_scope.cancel()
    assert done.status == "cancelled"


async def test_tool_calls_streamed_by_the_http_llm_reach_the_client_and_the_results_go_back():
    weather = tool_call_pieces(0, "call_w", "get_weather", '{"city": "Paris"}', parts=4)
    time = tool_call_pieces(1, "call_t", "get_time", "{}", parts=2)
    server = FakeOpenAIServer(script=[["Let me ", "check. ", *weather, *time], ["Sunny, ", "at noon."]])
    tools = [{"type": "function", "name": "get_weather"}, {"type": "function", "name": "get_time"}]
    async with session_with_http_llm(server) as client:
        await client.send({"type": "session.update", "session": {"tools": tools}})
        await client.send({"type": "input_text", "text": "Weather and time?"})
        calls = [await client.until("response.tool_call"), await client.until("response.tool_call")]
        for call, output in zip(calls, ['{"sky": "clear"}', '"12:00"']):
            await client.send({"type": "tool_call.output", "call_id": call.call_id, "output": output})
        done = await client.until("response.done")
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_w", "get_weather", '{"city": "Paris"}'),
        ("call_t", "get_time", "{}"),
    ]
    assert done.status == "completed" and done.text == "Let me check. Sunny, at noon."
    assert [t["function"]["name"] for t in server.requests[0]["tools"]] == ["get_weather", "get_time"]
    messages = server.requests[1]["messages"]
    assert messages[-3] == {
        "role": "assistant",
        "content": "Let me check. ",
        "tool_calls": [
            {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    }
    assert messages[-2:] == [
        {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_w"},
        {"role": "tool", "content": '"12:00"', "tool_call_id": "call_t"},
    ]
