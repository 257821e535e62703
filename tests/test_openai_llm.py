"""OpenAICompatibleLLM against a fake OpenAI-compatible server.

Loopback only, port 0; every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from fake_openai_server import FakeOpenAIServer
from voiceorch.engines.base import ChatMessage, EngineError
from voiceorch.engines.openai_llm import OpenAICompatibleLLM

API_KEY = "sk-test-0123456789-secret"
MESSAGES = [
    ChatMessage(role="system", content="You are brief."),
    ChatMessage(role="user", content="Say hello."),
]
TIMEOUT = 10


@pytest.fixture
async def fake(nursery: trio.Nursery) -> FakeOpenAIServer:
    server = FakeOpenAIServer()
    await nursery.start(server.serve)
    return server


@pytest.fixture
async def llm(fake: FakeOpenAIServer) -> AsyncIterator[OpenAICompatibleLLM]:
    engine = OpenAICompatibleLLM(base_url=fake.base_url, api_key=API_KEY, read_timeout=5.0)
    try:
        yield engine
    finally:
        await engine.aclose()


async def collect(llm: OpenAICompatibleLLM) -> list[str]:
    """Run stream_reply with a concurrent consumer; returns the deltas received."""
    send, receive = trio.open_memory_channel[str](0)
    got: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(llm.stream_reply, MESSAGES, send)
        async with receive:
            async for delta in receive:
                got.append(delta)
    return got


async def expect_error(llm: OpenAICompatibleLLM, code: str) -> EngineError:
    """Run stream_reply expecting EngineError ``code``; checks the channel is closed after."""
    send, receive = trio.open_memory_channel[str](16)
    with pytest.raises(EngineError) as info:
        await llm.stream_reply(MESSAGES, send)
    assert info.value.code == code, info.value.message
    while True:  # drain what arrived before the error; then the channel must be closed
        try:
            receive.receive_nowait()
        except trio.EndOfChannel:
            break
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
    return info.value


async def test_deltas_arrive_in_order_and_channel_closes(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    with trio.fail_after(TIMEOUT):
        assert await collect(llm) == ["Hello", ",", " world", "!"]


async def test_a_reply_returns_its_finish_reason(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    with trio.fail_after(TIMEOUT):
        send, receive = trio.open_memory_channel[str](16)
        assert await llm.stream_reply(MESSAGES, send) == "stop"
        fake.finish_reason = "length"  # the reply was cut off at max_tokens
        send, receive = trio.open_memory_channel[str](16)
        assert await llm.stream_reply(MESSAGES, send) == "length"
        assert [delta async for delta in receive] == ["Hello", ",", " world", "!"]
    assert fake.requests[-1]["max_tokens"] == llm.max_tokens


async def test_request_carries_messages_and_bearer_key(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    with trio.fail_after(TIMEOUT):
        await collect(llm)
    (body,) = fake.requests
    assert body["messages"] == [
        {"role": "system", "content": "You are brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert body["stream"] is True
    assert body["max_tokens"] == llm.max_tokens
    assert fake.request_headers[0]["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in repr(llm)


async def test_connection_is_reused(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    with trio.fail_after(TIMEOUT):
        assert await collect(llm) == await collect(llm)
    assert len(fake.requests) == 2


async def test_server_error_is_llm_error_without_key(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.mode = "error500"  # its body echoes the Authorization header
    with trio.fail_after(TIMEOUT):
        error = await expect_error(llm, "llm_error")
    assert error.message.startswith("LLM server answered 500: ")
    assert "internal failure" in error.message


async def test_connection_refused_is_llm_unavailable() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens on that port now
    llm = OpenAICompatibleLLM(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
    try:
        with trio.fail_after(TIMEOUT):
            await expect_error(llm, "llm_unavailable")
            assert await llm.check_ready() is not None
    finally:
        await llm.aclose()


async def test_malformed_sse_is_llm_bad_response(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.mode = "malformed"
    with trio.fail_after(TIMEOUT):
        await expect_error(llm, "llm_bad_response")


async def test_early_drop_is_llm_bad_response(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.mode = "drop"
    with trio.fail_after(TIMEOUT):
        await expect_error(llm, "llm_bad_response")


async def test_read_timeout_is_llm_timeout(fake: FakeOpenAIServer) -> None:
    fake.mode = "stall"
    llm = OpenAICompatibleLLM(base_url=fake.base_url, api_key=API_KEY, read_timeout=0.3)
    try:
        with trio.fail_after(TIMEOUT):
            await expect_error(llm, "llm_timeout")
            await fake.client_disconnected.wait()
    finally:
        await llm.aclose()


async def test_a_server_that_sends_no_text_fails_after_the_first_token_timeout(fake: FakeOpenAIServer) -> None:
    fake.mode = "keepalive"  # headers and SSE comments, so no read ever times out
    llm = OpenAICompatibleLLM(base_url=fake.base_url, read_timeout=5, first_token_timeout=0.5)
    try:
        with trio.fail_after(TIMEOUT):
            error = await expect_error(llm, "llm_timeout")
            await fake.client_disconnected.wait()  # the request was closed, not left running
        assert "0.5 s" in error.message
    finally:
        await llm.aclose()


async def test_cancelling_closes_the_stream(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.mode = "stall"
    send, receive = trio.open_memory_channel[str](0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(llm.stream_reply, MESSAGES, send)
            assert await receive.receive() == "Hello"
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.EndOfChannel):
            await receive.receive()  # the engine closed its channel on the way out
        await fake.client_disconnected.wait()


async def test_consumer_leaving_drops_the_request(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.delay = 0.05
    fake.deltas = [f"word{i} " for i in range(100)]
    send, receive = trio.open_memory_channel[str](0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(llm.stream_reply, MESSAGES, send)
            assert await receive.receive() == "word0 "
            await receive.aclose()  # stream_reply returns quietly
        await fake.client_disconnected.wait()


async def test_check_ready_and_warm_up(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    with trio.fail_after(TIMEOUT):
        assert await llm.check_ready() is None
        await llm.warm_up()
    assert fake.requests[0]["max_tokens"] <= 4


async def test_requests_are_queued_one_at_a_time(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.delay = 0.02
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(collect, llm)
    assert len(fake.requests) == 3
    assert fake.peak_streams == 1


async def test_concurrent_requests_when_unlimited(fake: FakeOpenAIServer) -> None:
    fake.delay = 0.05
    llm = OpenAICompatibleLLM(base_url=fake.base_url, max_concurrent_requests=None)
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(collect, llm)
    finally:
        await llm.aclose()
    assert fake.peak_streams == 3


async def test_check_ready_does_not_disturb_a_streaming_reply(fake: FakeOpenAIServer, llm: OpenAICompatibleLLM) -> None:
    fake.mode = "stall"
    send, receive = trio.open_memory_channel[str](0)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(llm.stream_reply, MESSAGES, send)
            assert await receive.receive() == "Hello"
            assert await llm.check_ready() is None  # busy streaming: up, and no GET sent
            assert fake.models_requests == 0
            nursery.cancel_scope.cancel()
        assert await llm.check_ready() is None
    assert fake.models_requests == 1


# --- failover and retries -------------------------------------------------------------------


async def _free_port_url() -> str:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nothing listens on that port now
    return f"http://127.0.0.1:{port}/v1"


async def test_a_failing_server_fails_over_to_the_next_which_is_then_tried_first(nursery: trio.Nursery) -> None:
    broken, healthy = FakeOpenAIServer(mode="error500"), FakeOpenAIServer()
    for server in (broken, healthy):
        await nursery.start(server.serve)
    llm = OpenAICompatibleLLM(base_url=broken.base_url, fallback_urls=[healthy.base_url], retries=0)
    try:
        with trio.fail_after(TIMEOUT):
            assert "".join(await collect(llm)) == "Hello, world!"
            assert "".join(await collect(llm)) == "Hello, world!"
            assert await llm.check_ready() is None
    finally:
        await llm.aclose()
    assert (len(broken.requests), len(healthy.requests)) == (1, 2)  # sticky after the failover


async def test_an_unreachable_server_fails_over(fake: FakeOpenAIServer) -> None:
    llm = OpenAICompatibleLLM(base_url=await _free_port_url(), fallback_urls=[fake.base_url], retries=0)
    try:
        with trio.fail_after(TIMEOUT):
            assert "".join(await collect(llm)) == "Hello, world!"
    finally:
        await llm.aclose()


async def test_a_request_is_never_sent_again_once_text_was_delivered(nursery: trio.Nursery) -> None:
    dropping, spare = FakeOpenAIServer(mode="drop"), FakeOpenAIServer()
    for server in (dropping, spare):
        await nursery.start(server.serve)
    llm = OpenAICompatibleLLM(base_url=dropping.base_url, fallback_urls=[spare.base_url], retries=3)
    try:
        with trio.fail_after(TIMEOUT):
            await expect_error(llm, "llm_bad_response")
    finally:
        await llm.aclose()
    assert (len(dropping.requests), len(spare.requests)) == (1, 0)


@pytest.mark.parametrize("retries, expected_requests", [(0, 1), (2, 3)])
async def test_one_server_is_retried_for_retryable_failures_only(
    fake: FakeOpenAIServer, retries: int, expected_requests: int
) -> None:
    fake.mode = "error500"
    llm = OpenAICompatibleLLM(base_url=fake.base_url, retries=retries)
    try:
        with trio.fail_after(TIMEOUT):
            await expect_error(llm, "llm_error")
            assert len(fake.requests) == expected_requests
            fake.mode = "malformed"  # not retryable: a second request would not help
            await expect_error(llm, "llm_bad_response")
            assert len(fake.requests) == expected_requests + 1
    finally:
        await llm.aclose()


async def test_the_wait_for_a_request_slot_fails_with_llm_timeout(
    fake: FakeOpenAIServer, autojump_clock: trio.testing.MockClock
) -> None:
    llm = OpenAICompatibleLLM(base_url=fake.base_url, max_concurrent_requests=2, first_token_timeout=3)
    try:
        for holder in ("a", "b"):  # two replies streaming: every slot is taken
            llm.limiter.acquire_on_behalf_of_nowait(holder)
        started = trio.current_time()
        with trio.fail_after(TIMEOUT):  # virtual time
            error = await expect_error(llm, "llm_timeout")
        assert trio.current_time() - started == pytest.approx(3)
        assert "slot" in error.message and "3 s" in error.message
        assert fake.requests == []  # nothing was sent
        assert llm.limiter.statistics().tasks_waiting == 0  # the waiter left the queue
    finally:
        await llm.aclose()


async def test_the_wait_for_a_slot_counts_against_the_first_token_timeout(
    fake: FakeOpenAIServer, autojump_clock: trio.testing.MockClock
) -> None:
    fake.mode = "keepalive"  # the server never sends text
    fake.delay = 0.1
    llm = OpenAICompatibleLLM(base_url=fake.base_url, read_timeout=30, first_token_timeout=1.0)
    llm.limiter.acquire_on_behalf_of_nowait("streaming reply")

    async def release_later() -> None:
        await trio.sleep(0.6)
        llm.limiter.release_on_behalf_of("streaming reply")

    try:
        started = trio.current_time()
        with trio.fail_after(TIMEOUT):  # virtual time
            async with trio.open_nursery() as nursery:
                nursery.start_soon(release_later)
                await expect_error(llm, "llm_timeout")
        # 1.0 s after the call (virtual time), not 0.6 s of waiting plus a fresh 1.0 s.
        assert trio.current_time() - started == pytest.approx(1.0, abs=0.05)
        assert len(fake.requests) == 1
    finally:
        await llm.aclose()


async def test_the_llm_limiter_queue_depth_is_exported(fake: FakeOpenAIServer) -> None:
    from prometheus_client import REGISTRY, generate_latest

    from voiceorch import metrics
    from voiceorch.engines.base import Engines
    from voiceorch.engines.fakes import FakeSTT, FakeTTS, FakeVAD
    from voiceorch.server.app import watch_engine_limiters

    llm = OpenAICompatibleLLM(base_url=fake.base_url, max_concurrent_requests=1)
    watch_engine_limiters(Engines(stt=FakeSTT(), llm=llm, tts=FakeTTS(), vad=FakeVAD()))
    llm.limiter.acquire_on_behalf_of_nowait("streaming reply")
    try:
        with trio.fail_after(TIMEOUT):
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(collect, llm)
                await trio.testing.wait_all_tasks_blocked()
                text = generate_latest(REGISTRY).decode()
                assert 'voiceorch_limiter_waiting{engine="llm"} 2.0' in text
                llm.limiter.release_on_behalf_of("streaming reply")
        text = generate_latest(REGISTRY).decode()
        assert 'voiceorch_limiter_waiting{engine="llm"} 0.0' in text
    finally:
        metrics.unwatch_limiter("llm")
        await llm.aclose()
