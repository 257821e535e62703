"""A small fake OpenAI-compatible chat-completions server for tests (h11 over Trio TCP).

Start it with ``base_url = await nursery.start(server.serve)``; it listens on 127.0.0.1 with a
port chosen by the OS and serves until the nursery is cancelled. ``server.mode`` selects how
``POST /v1/chat/completions`` answers (it is read per request, so a test may change it):

- ``"stream"``: the ``deltas`` as SSE chunks, a chunk with ``finish_reason`` (``"stop"``, or
  ``"length"`` to play a reply cut off at ``max_tokens``), then ``[DONE]``;
- ``"error500"``: a 500 with a JSON error body that echoes the request's Authorization header;
- ``"malformed"``: one delta, then an SSE event whose data is not JSON;
- ``"drop"``: one delta, then the connection is closed mid-body;
- ``"stall"``: one delta, then nothing until the client goes away;
- ``"keepalive"``: no delta at all, only an SSE comment every ``delay`` (at least 50 ms) until
  the client goes away (a server that is up but stuck).

``script`` scripts replies that call tools, in the real wire format: each chat request (in
``"stream"`` mode) takes the next step of the script (then ``deltas`` once it is used up); a
step is a list of chunks' deltas, a string for text or a list of ``tool_calls`` pieces
(:func:`tool_call_pieces` cuts a call into them, as servers stream it), and ends with
``finish_reason`` ``"tool_calls"`` if it has any.

``GET /v1/models`` answers a model list. Every chat request's JSON body and headers are
recorded; ``client_disconnected`` is set when a client leaves while a stream is still going;
``peak_streams`` counts the most streams served at once; ``models_requests`` counts GETs.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import attrs
import h11
import trio

Mode = Literal["stream", "error500", "malformed", "drop", "stall", "keepalive"]

_MAX_RECEIVE = 65536


@attrs.define(kw_only=True)
class FakeOpenAIServer:
    mode: Mode = "stream"
    deltas: list[str] = attrs.field(factory=lambda: ["Hello", ",", " world", "!"])
    script: list[list[str | list[dict[str, Any]]]] = attrs.field(factory=list)
    finish_reason: str = "stop"
    #: Pause before each SSE event of a stream (gives a client time to cancel).
    delay: float = 0.0
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    request_headers: list[dict[str, str]] = attrs.field(factory=list)
    #: Set when a client disconnected while one of its streams was still going.
    client_disconnected: trio.Event = attrs.field(factory=trio.Event)
    #: Streams going on now, and the most ever at once.
    streams_in_progress: int = 0
    peak_streams: int = 0
    models_requests: int = 0
    base_url: str = ""
    #: 0: a port chosen by the OS.
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the base URL (``http://127.0.0.1:PORT/v1``), serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle_connection, listeners)
            task_status.started(self.base_url)

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await receive_request(conn, stream)
                if request is None:
                    return
                keep_open = await self._respond(conn, stream, request, body)
                if not keep_open or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> bool:
        """Answer one request; False if the connection must now be closed."""
        target = request.target.decode()
        if request.method == b"GET" and target == "/v1/models":
            self.models_requests += 1
            models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
            await _send_json(conn, stream, 200, models)
            return True
        if request.method != b"POST" or target != "/v1/chat/completions":
            await _send_json(conn, stream, 404, {"error": {"message": "not found"}})
            return True

        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        self.request_headers.append(headers)
        self.requests.append(json.loads(body))
        if self.mode == "error500":
            echo = f"internal failure handling request with {headers.get('authorization')}"
            await _send_json(conn, stream, 500, {"error": {"message": echo, "type": "server"}})
            return True
        self.streams_in_progress += 1
        self.peak_streams = max(self.peak_streams, self.streams_in_progress)
        try:
            return await self._stream_reply(conn, stream)
        finally:
            self.streams_in_progress -= 1

    async def _stream_reply(self, conn: h11.Connection, stream: trio.SocketStream) -> bool:
        sse_headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=sse_headers)))
        deltas: list[str | list[dict[str, Any]]] = list(
            {"stream": self.deltas, "keepalive": []}.get(self.mode, self.deltas[:1])
        )
        finish_reason = self.finish_reason
        if self.mode == "stream" and self.script:
            deltas = self.script.pop(0)
            if any(isinstance(delta, list) for delta in deltas):
                finish_reason = "tool_calls"
        try:
            if self.mode == "keepalive":
                while True:
                    await trio.sleep(max(self.delay, 0.05))
                    await stream.send_all(conn.send(h11.Data(data=b": keep-alive\n\n")))
            for delta in deltas:
                await self._send_event(conn, stream, json.dumps(_chunk(delta, None)))
            if self.mode == "malformed":
                await self._send_event(conn, stream, '{"choices": [{"delta": {"content": "x"')
            elif self.mode == "drop":
                return False  # close with the chunked body unfinished
            elif self.mode == "stall":
                # Nothing more to send: wait until the client closes its side.
                while await stream.receive_some(_MAX_RECEIVE):
                    pass
                self.client_disconnected.set()
                return False
            await self._send_event(conn, stream, json.dumps(_chunk(None, finish_reason)))
            await self._send_event(conn, stream, "[DONE]")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_disconnected.set()
            return False
        await stream.send_all(conn.send(h11.EndOfMessage()))
        return True

    async def _send_event(self, conn: h11.Connection, stream: trio.SocketStream, data: str) -> None:
        if self.delay:
            await trio.sleep(self.delay)
        await stream.send_all(conn.send(h11.Data(data=f"data: {data}\n\n".encode())))


def tool_call_pieces(index: int, call_id: str, name: str, arguments: str, parts: int = 3) -> list[list[dict[str, Any]]]:
    """One call as servers stream it: a first piece with its id, name and no arguments, then
    its arguments cut into ``parts`` pieces (each a chunk's ``tool_calls`` list)."""
    first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    size = -(-len(arguments) // parts) or 1
    rest = [
        [{"index": index, "function": {"arguments": arguments[i : i + size]}}] for i in range(0, len(arguments), size)
    ]
    return [[first], *rest]


def _chunk(content: str | list[dict[str, Any]] | None, finish_reason: str | None) -> dict[str, Any]:
    if isinstance(content, list):
        delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": content}
    else:
        delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


async def receive_request(conn: h11.Connection, stream: trio.SocketStream) -> tuple[h11.Request | None, bytes]:
    """The next request and its body, or ``(None, b"")`` when the client closed."""
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_MAX_RECEIVE))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def _send_json(conn: h11.Connection, stream: trio.SocketStream, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=data)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


@contextmanager
def serving_in_thread(server: FakeOpenAIServer) -> Iterator[str]:
    """Run ``server`` in a Trio loop of its own, in a thread (for synchronous tests that start
    ``voiceorch serve`` as a child process); yields its base URL, and stops it on exit."""
    started: queue.Queue = queue.Queue()
    stop = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            started.put(await nursery.start(server.serve))
            while not stop.is_set():
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    try:
        yield started.get(timeout=30)
    finally:
        stop.set()
        thread.join(timeout=30)
