"""A tiny real MCP server for tests, written with the official SDK's ``MCPServer`` (FastMCP in mcp 1.x).

Run it as ``python tests/mcp_test_server.py`` (stdio), or with ``--http`` (streamable HTTP on a
free loopback port, or ``--port N``; it prints ``port: N`` on stdout once it listens). ``--name NAME`` gives it
another server name and ``--prefix P`` prefixes its tools' names (two servers whose tools clash).

Tools: ``add(a, b)``, ``weather(city)``, ``fail(reason)`` (raises ``ToolError``),
``slow(seconds, tag)`` (sleeps; its start and its cancellation are counted by tag),
``slow_started(tag)`` and ``cancellations(tag)`` (those counts; each waits up to ``wait_s`` for
at least ``at_least``), and
``name()`` and ``pid()`` (the server's name and process id).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build(name: str, prefix: str) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")
    counts: dict[tuple[str, str], int] = {}  # (what, tag) -> how many
    changed = anyio.Event()

    def count(what: str, tag: str) -> None:
        nonlocal changed
        counts[what, tag] = counts.get((what, tag), 0) + 1
        changed.set()
        changed = anyio.Event()

    async def wait_for(what: str, tag: str, at_least: int, wait_s: float) -> str:
        with anyio.move_on_after(wait_s):
            while counts.get((what, tag), 0) < at_least:
                await changed.wait()
        return str(counts.get((what, tag), 0))

    @server.tool(name=f"{prefix}add", description="Add two integers.")
    def add(a: int, b: int) -> str:
        return str(a + b)

    @server.tool(name=f"{prefix}weather", description="Today's weather in a city.")
    def weather(city: str) -> str:
        return f"It is sunny and 21 degrees in {city}."

    @server.tool(name=f"{prefix}fail", description="Always fails.")
    def fail(reason: str = "broken on purpose") -> str:
        raise ToolError(reason)

    @server.tool(name=f"{prefix}slow", description="Sleeps, then answers.")
    async def slow(seconds: float, tag: str = "") -> str:
        count("started", tag)
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            count("cancelled", tag)
            raise
        return f"slept {seconds} s"

    @server.tool(name=f"{prefix}slow_started", description="How many slow calls with this tag began.")
    async def slow_started(tag: str = "", at_least: int = 0, wait_s: float = 0.0) -> str:
        return await wait_for("started", tag, at_least, wait_s)

    @server.tool(name=f"{prefix}cancellations", description="How many slow calls with this tag were cancelled.")
    async def cancellations(tag: str = "", at_least: int = 0, wait_s: float = 0.0) -> str:
        return await wait_for("cancelled", tag, at_least, wait_s)

    @server.tool(name=f"{prefix}name", description="The server's name.")
    def server_name() -> str:
        return name

    @server.tool(name=f"{prefix}pid", description="The server's process id.")
    def pid() -> str:
        return str(os.getpid())

    return server


async def serve_http(server: MCPServer, port: int) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)  # before "port: N" is printed: a client may connect at once (uvicorn listens again, harmlessly)
    config = uvicorn.Config(server.streamable_http_app(), log_level="warning", lifespan="on")
    print(f"port: {sock.getsockname()[1]}", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true")
    parser.add_argument("--name", default="voiceorch-test")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--port", type=int, default=0, help="with --http (default: a free one)")
    args = parser.parse_args()
    server = build(args.name, args.prefix)
    print(f"{args.name} starting", file=sys.stderr, flush=True)
    if args.http:
        anyio.run(serve_http, server, args.port)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
