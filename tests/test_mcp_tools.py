"""Server-side tools over MCP (voiceorch/engines/mcp_tools.py) against a real MCP server written with
the official SDK (tests/mcp_test_server.py), over stdio and streamable HTTP on loopback: listing, calls,
a failing tool, a time limit, cancellation reaching the server, a dead stdio server started again,
and /readyz following the servers. Real processes and real clocks: every wait has a fail_after bound
and nothing asserts a duration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from prometheus_client import REGISTRY

from session_harness import connected, fake_engines
from voiceorch.engines.base import Engines, ToolCall
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, FakeVAD
from voiceorch.engines.mcp_tools import McpServerSpec, McpTools
from voiceorch.server.http import HttpApp

SERVER = Path(__file__).parent / "mcp_test_server.py"
STDIO = McpServerSpec(command=(sys.executable, str(SERVER)))
#: Generous: a Python MCP server takes a second or more to start on a loaded machine.
BOUND_S = 60


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_until(predicate, what: str) -> None:
    """Poll ``predicate`` (async) until true (the caller bounds it with fail_after)."""
    while not await predicate():
        await trio.sleep(0.05)


async def test_stdio_tools_are_listed_called_bounded_and_cancelled() -> None:
    tools = McpTools([STDIO], call_timeout_s=30, restart_backoff=0.1)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            await nursery.start(tools.run)
            specs = {spec.name: spec for spec in tools.specs()}
            assert {"add", "weather", "fail", "slow", "cancellations", "pid"} <= set(specs)
            assert specs["add"].description == "Add two integers."
            assert set(specs["add"].parameters["properties"]) == {"a", "b"}
            assert await tools.check_ready() is None

            ok_before = sample("voiceorch_tool_call_seconds_count", tool="add", outcome="ok")
            assert (await tools.call("add", '{"a": 2, "b": 40}')).output == "42"
            assert sample("voiceorch_tool_call_seconds_count", tool="add", outcome="ok") == ok_before + 1

            failed = await tools.call("fail", json.dumps({"reason": "the disk is on fire"}))
            assert failed.is_error and "the disk is on fire" in failed.output
            unknown = await tools.call("launch_rockets", "{}")
            assert unknown.is_error and "launch_rockets" in unknown.output
            assert (await tools.call("add", "{not json")).is_error
            assert (await tools.call("add", "[1, 2]")).is_error
            wrong = await tools.call("add", '{"a": "two"}')  # the server validates the arguments
            assert wrong.is_error

            # A call past the time limit is an error result, and the server is told to stop.
            timeouts = sample("voiceorch_tool_call_seconds_count", tool="slow", outcome="timeout")
            tools.call_timeout_s = 1.0
            timed_out = await tools.call("slow", '{"seconds": 120}')
            tools.call_timeout_s = 30
            assert timed_out.is_error and "did not answer within 1 s" in timed_out.output
            assert sample("voiceorch_tool_call_seconds_count", tool="slow", outcome="timeout") == timeouts + 1

            # Cancelling a call (a barge-in cancels the turn's scope) cancels its MCP request:
            # the server sees the cancellation.
            with trio.CancelScope() as turn:

                async def cancel_once_running() -> None:
                    args = {"tag": "barge-in", "at_least": 1, "wait_s": 30}
                    assert (await tools.call("slow_started", json.dumps(args))).output == "1"
                    turn.cancel()

                async with trio.open_nursery() as calls:
                    calls.start_soon(cancel_once_running)
                    await tools.call("slow", '{"seconds": 120, "tag": "barge-in"}')
                    pytest.fail("the call should have been cancelled")
            assert turn.cancelled_caught
            seen = await tools.call("cancellations", '{"tag": "barge-in", "at_least": 1, "wait_s": 30}')
            assert seen.output == "1"
        nursery.cancel_scope.cancel()


async def test_a_dead_stdio_server_is_started_again_and_readyz_follows_it() -> None:
    tools = McpTools([STDIO], restart_backoff=0.1)
    app = HttpApp(Engines(stt=FakeSTT(), llm=FakeLLM(), tts=FakeTTS(), vad=FakeVAD(), tools=tools), voice_port=1)
    label = STDIO.label
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            await nursery.start(tools.run)
            assert await app.not_ready_reason() is None
            assert sample("voiceorch_mcp_server_up", server=label) == 1
            restarts = sample("voiceorch_mcp_server_restarts_total", server=label)
            first_pid = int((await tools.call("pid", "{}")).output)

            os.kill(first_pid, signal.SIGKILL)

            async def down() -> bool:
                return await app.not_ready_reason() is not None

            await wait_until(down, "the server is seen dead")
            reason = await app.not_ready_reason()
            assert "MCP server (stdio)" in reason and "is down" in reason

            async def up() -> bool:
                return await app.not_ready_reason() is None

            await wait_until(up, "the server is back")
            second_pid = int((await tools.call("pid", "{}")).output)
            assert second_pid != first_pid
            assert (await tools.call("add", '{"a": 1, "b": 1}')).output == "2"
            assert sample("voiceorch_mcp_server_restarts_total", server=label) == restarts + 1
            assert sample("voiceorch_mcp_server_up", server=label) == 1
        nursery.cancel_scope.cancel()
    # The shutdown stopped the server it had started.
    with pytest.raises(ProcessLookupError):
        os.kill(second_pid, 0)


async def test_a_server_that_cannot_start_leaves_the_others_serving_and_is_named_by_readyz() -> None:
    missing = McpServerSpec.stdio("/nonexistent/mcp-server --flag")
    tools = McpTools([missing, STDIO], restart_backoff=0.1)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            await nursery.start(tools.run)
            assert "add" in {spec.name for spec in tools.specs()}
            assert (await tools.call("add", '{"a": 1, "b": 2}')).output == "3"
            reason = await tools.check_ready()
            assert reason is not None and "/nonexistent/mcp-server" in reason and "FileNotFoundError" in reason
        nursery.cancel_scope.cancel()


async def test_the_first_server_given_keeps_a_clashing_tool_name() -> None:
    other = McpServerSpec(command=(sys.executable, str(SERVER), "--name", "second"))
    prefixed = McpServerSpec(command=(sys.executable, str(SERVER), "--prefix", "b_"))
    tools = McpTools([STDIO, other, prefixed], restart_backoff=0.1)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            await nursery.start(tools.run)
            names = [spec.name for spec in tools.specs()]
            assert len(names) == len(set(names))  # each name once
            assert "add" in names and "b_add" in names
            # Whichever connected first, the name belongs to the server given first.
            assert (await tools.call("name", "{}")).output == "voiceorch-test"
            assert (await tools.call("b_name", "{}")).output == "voiceorch-test"
            assert int((await tools.call("pid", "{}")).output) != int((await tools.call("b_pid", "{}")).output)
        nursery.cancel_scope.cancel()


async def start_http_server(nursery: trio.Nursery, port: int = 0) -> tuple[trio.Process, int]:
    """Run the test server over streamable HTTP; returns it and its port once it listens."""
    process = await nursery.start(
        lambda task_status: trio.run_process(
            [sys.executable, str(SERVER), "--http", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            check=False,
            task_status=task_status,
        )
    )
    line = b""
    while not line.endswith(b"\n"):
        line += await process.stdout.receive_some(1)
    return process, int(line.decode().removeprefix("port: "))


async def test_streamable_http_server_gone_and_back() -> None:
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            process, port = await start_http_server(nursery)
            url = f"http://127.0.0.1:{port}/mcp"
            tools = McpTools([McpServerSpec.http(url)], restart_backoff=0.1, max_backoff=0.5)
            await nursery.start(tools.run)
            assert {"add", "slow"} <= {spec.name for spec in tools.specs()}
            assert await tools.check_ready() is None
            assert (await tools.call("weather", '{"city": "Oslo"}')).output == "It is sunny and 21 degrees in Oslo."
            failed = await tools.call("fail", "{}")
            assert failed.is_error and "broken on purpose" in failed.output

            process.kill()
            await process.wait()
            gone = await tools.call("add", '{"a": 1, "b": 2}')  # a call finds it gone
            assert gone.is_error and "unavailable" in gone.output
            reason = await tools.check_ready()
            assert reason is not None and url in reason
            assert {"add", "slow"} <= {spec.name for spec in tools.specs()}  # still offered

            await start_http_server(nursery, port)  # back on the same port: reconnected

            async def up() -> bool:
                return await tools.check_ready() is None

            await wait_until(up, "reconnected")
            assert (await tools.call("add", '{"a": 1, "b": 2}')).output == "3"
        nursery.cancel_scope.cancel()


async def test_a_cancelled_response_cancels_its_running_mcp_call_and_keeps_the_history_paired() -> None:
    """The session's rules with a real MCP server: the LLM calls a slow MCP tool, the client
    cancels the response while it runs: the MCP server sees the request cancelled, the response
    ends ``cancelled``, and the next LLM request holds the call paired with a result."""
    tools = McpTools([STDIO], restart_backoff=0.1)
    llm = FakeLLM(
        first_delay=0,
        delta_delay=0,
        steps=[
            ["One moment.", ToolCall(call_id="call_slow", name="slow", arguments='{"seconds": 120, "tag": "turn"}')]
        ],
        reply="Fine.",
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(BOUND_S):
            await nursery.start(tools.run)
            async with connected(fake_engines(llm=llm, tools=tools)) as client:
                await client.send({"type": "input_text", "text": "Take your time."})
                args = {"tag": "turn", "at_least": 1, "wait_s": 30}
                assert (await tools.call("slow_started", json.dumps(args))).output == "1"
                await client.send({"type": "response.cancel"})
                done = await client.until("response.done")
                seen = await tools.call("cancellations", json.dumps(args))
                await client.send({"type": "input_text", "text": "Still there?"})
                after = await client.until("response.done")
        nursery.cancel_scope.cancel()
    assert done.status == "cancelled" and seen.output == "1"
    assert "slow" in llm.tools[0]  # the MCP server's tools were offered
    assert after.status == "completed"
    history = llm.requests[-1]
    calls = [m for m in history if getattr(m, "tool_calls", None)]
    results = [m for m in history if getattr(m, "tool_call_id", None) == "call_slow"]
    assert [c.call_id for m in calls for c in m.tool_calls] == ["call_slow"] and len(results) == 1
