"""A FAKE OpenAI-compatible audio server for tests (h11 over Trio TCP on 127.0.0.1).

Start it with ``base_url = await nursery.start(server.serve)``. ``server.mode`` (read per
request) selects how ``POST /v1/audio/transcriptions`` and ``POST /v1/audio/speech`` answer:

- ``"ok"``: a transcription ``{"text": text}``; speech as a WAV file (a 440 Hz tone at
  :attr:`rate`, sent in pieces) or, for ``response_format=pcm``, raw s16le at :attr:`rate`;
- ``"stream_wav"``: speech as a WAV whose header gives no length (0xFFFFFFFF), as streaming
  servers send it;
- ``"error500"``: a 500 whose JSON body echoes the request's Authorization header;
- ``"malformed"``: 200 with a body that is neither JSON nor audio;
- ``"drop"``: part of the body, then the connection is closed;
- ``"stall"``: the headers and part of the body, then nothing until the client goes
  (:attr:`first_bytes_sent`, then :attr:`client_disconnected`, are set);
- ``"flood"``: 200 and a chunked body that never ends (``{"text": "aaaa...`` for a
  transcription, WAV audio for speech) until the client goes (then :attr:`client_disconnected`
  is set; :attr:`flood_bytes` counts what was sent);
- ``"error_flood"``: the same, with status 500.

Requests are recorded in :attr:`requests` (target, headers, and the form fields and files
of a multipart body or the JSON of a JSON body).
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import wave
from typing import Any, Literal

import attrs
import h11
import numpy as np
import trio

from fake_openai_server import receive_request

Mode = Literal["ok", "stream_wav", "error500", "malformed", "drop", "stall", "flood", "error_flood"]

_MAX_RECEIVE = 65536


@attrs.define(kw_only=True)
class FakeOpenAIAudioServer:
    mode: Mode = "ok"
    text: str = " hello from the fake "
    rate: int = 22050
    seconds: float = 0.5
    requests: list[dict[str, Any]] = attrs.field(factory=list)
    first_bytes_sent: trio.Event = attrs.field(factory=trio.Event)
    client_disconnected: trio.Event = attrs.field(factory=trio.Event)
    flood_bytes: int = 0
    base_url: str = ""

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.base_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v1"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle_connection, listeners)
            task_status.started(self.base_url)

    def tone(self) -> bytes:
        t = np.arange(int(self.rate * self.seconds)) / self.rate
        return (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes()

    async def _handle_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await receive_request(conn, stream)
                if request is None:
                    return
                if not await self._respond(conn, stream, request, body):
                    return
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            return
        finally:
            await stream.aclose()

    async def _respond(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request, body: bytes
    ) -> bool:
        target = request.target.decode()
        headers = {name.decode().lower(): value.decode() for name, value in request.headers}
        record: dict[str, Any] = {"target": target, "headers": headers}
        self.requests.append(record)
        if request.method != b"POST" or target not in ("/v1/audio/transcriptions", "/v1/audio/speech"):
            await _send(conn, stream, 404, "application/json", b'{"error": {"message": "not found"}}')
            return True
        if target.endswith("transcriptions"):
            record.update(_parse_form(headers.get("content-type", ""), body))
        else:
            record["json"] = json.loads(body)
        if self.mode == "error500":
            echo = json.dumps({"error": {"message": f"failed for {headers.get('authorization')}"}}).encode()
            await _send(conn, stream, 500, "application/json", echo)
            return True
        if self.mode in ("flood", "error_flood"):
            return await self._flood(conn, stream, b'{"text": "' if target.endswith("transcriptions") else None)
        if self.mode == "malformed":
            await _send(conn, stream, 200, "application/json", b"<html>surprise</html>")
            return True
        if target.endswith("transcriptions"):
            if self.mode in ("ok", "stream_wav"):
                await _send(conn, stream, 200, "application/json", json.dumps({"text": self.text}).encode())
                return True
            return await self._misbehave(conn, stream, json.dumps({"text": self.text}).encode())
        audio_format = record["json"].get("response_format")
        audio = self.tone() if audio_format == "pcm" else _wav(self.tone(), self.rate, self.mode == "stream_wav")
        if self.mode in ("ok", "stream_wav"):
            await stream.send_all(conn.send(h11.Response(status_code=200, headers=[("content-type", "audio/wav")])))
            for offset in range(0, len(audio), 4096):
                await stream.send_all(conn.send(h11.Data(data=audio[offset : offset + 4096])))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            return True
        return await self._misbehave(conn, stream, audio)

    async def _misbehave(self, conn: h11.Connection, stream: trio.SocketStream, body: bytes) -> bool:
        headers = [("content-type", "application/octet-stream"), ("content-length", str(len(body)))]
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers)))
        await stream.send_all(conn.send(h11.Data(data=body[: len(body) // 4])))
        if self.mode == "stall":
            self.first_bytes_sent.set()
            while await stream.receive_some(_MAX_RECEIVE):
                pass
            self.client_disconnected.set()
        return False  # "drop": close with the body unfinished

    async def _flood(self, conn: h11.Connection, stream: trio.SocketStream, start: bytes | None) -> bool:
        status = 500 if self.mode == "error_flood" else 200
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=[("transfer-encoding", "chunked")])))
        piece = b"a" * 65536 if start is not None else self.tone()[:65536]
        first = start if start is not None else _wav(self.tone(), self.rate, unknown_length=True)
        try:
            await stream.send_all(conn.send(h11.Data(data=first)))
            while True:
                await stream.send_all(conn.send(h11.Data(data=piece)))
                self.flood_bytes += len(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.client_disconnected.set()
        return False


def _wav(pcm: bytes, rate: int, unknown_length: bool) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    data = bytearray(buffer.getvalue())
    if unknown_length:
        data[4:8] = b"\xff\xff\xff\xff"  # RIFF size
        data[40:44] = b"\xff\xff\xff\xff"  # data size
    return bytes(data)


def _parse_form(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, str, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        payload = part.get_payload(decode=True)
        if filename:
            files[name] = (filename, part.get_content_type(), payload)
        else:
            fields[name] = payload.decode()
    return {"fields": fields, "files": files}


async def _send(conn: h11.Connection, stream: trio.SocketStream, status: int, content_type: str, data: bytes) -> None:
    headers = [("content-type", content_type), ("content-length", str(len(data)))]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.send_all(conn.send(h11.Data(data=data)))
    await stream.send_all(conn.send(h11.EndOfMessage()))
