"""End to end: a real ``voiceorch serve`` with an MCP server (``--mcp``, the SDK-written
tests/mcp_test_server.py over stdio) and the fake OpenAI-compatible LLM server scripted to call
its tool. The server runs the call itself, the LLM gets the result, and the turn speaks the
answer; /readyz, /metrics and the logs show it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trio_websocket

from fake_openai_server import FakeOpenAIServer, tool_call_pieces
from real_server import start_server
from voiceorch.engines.mcp_tools import McpServerSpec

pytestmark = pytest.mark.models  # real speech-to-text and text-to-speech

MCP_SERVER = Path(__file__).parent / "mcp_test_server.py"
TIMEOUT = 240


async def test_serve_calls_an_mcp_tool_for_the_llm_and_speaks_the_answer() -> None:
    call = tool_call_pieces(0, "call_1", "weather", '{"city": "Oslo"}', parts=3)
    llm = FakeOpenAIServer(script=[["Let me look. ", *call], ["It is sunny ", "in Oslo."]])
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            base_url = await nursery.start(llm.serve)
            args = ("--llm-url", base_url, "--mcp", f"{sys.executable} {MCP_SERVER}", "--no-warm-up")
            server = await trio.to_thread.run_sync(lambda: start_server(*args))
            try:
                async with (
                    trio_websocket.open_websocket_url(server.url) as ws,
                    httpx.AsyncClient(base_url=server.http_url, timeout=10) as http,
                ):
                    assert (await http.get("/readyz")).status_code == 200
                    assert json.loads(await ws.get_message())["type"] == "session.created"
                    update = {"type": "session.update", "session": {"turn_detection": {"type": "none"}}}
                    await ws.send_message(json.dumps(update))
                    await ws.send_message(json.dumps({"type": "input_text", "text": "What is the weather in Oslo?"}))
                    events, audio_bytes = [], 0
                    while not events or events[-1]["type"] != "response.done":
                        message = await ws.get_message()
                        if isinstance(message, bytes):
                            audio_bytes += len(message)
                        else:
                            events.append(json.loads(message))
                    metrics = (await http.get("/metrics")).text
            finally:
                rc = await trio.to_thread.run_sync(server.stop)
            nursery.cancel_scope.cancel()

    done = events[-1]
    assert done["status"] == "completed" and done["text"] == "Let me look. It is sunny in Oslo."
    assert audio_bytes > 16_000  # both sentences were spoken (well over half a second of audio)
    assert "response.tool_call" not in [e["type"] for e in events]  # the server ran it, not the client
    # The LLM was offered the MCP server's tools, and got the tool's own answer back.
    offered = {t["function"]["name"]: t["function"] for t in llm.requests[0]["tools"]}
    assert offered["weather"]["description"] == "Today's weather in a city."
    assert llm.requests[1]["messages"][-1] == {
        "role": "tool",
        "content": "It is sunny and 21 degrees in Oslo.",
        "tool_call_id": "call_1",
    }
    assert 'voiceorch_tool_call_seconds_count{outcome="ok",tool="weather"} 1.0' in metrics
    label = McpServerSpec(command=(sys.executable, str(MCP_SERVER))).label
    assert f'voiceorch_mcp_server_up{{server="{label}"}} 1.0' in metrics
    calls = [line for line in server.log_lines() if line.get("event") == "tool.call"]
    assert [(c["tool"], c["outcome"]) for c in calls] == [("weather", "ok")]
    assert rc == 0
