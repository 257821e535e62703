"""``voiceorch talk``: a command-line client that speaks protocol v1 over trio-websocket.

Each turn is a WAV file or a typed text. By default the client ends each spoken turn itself
(push-to-talk: it turns server VAD off, sends the file in 20 ms frames and commits); with
``vad=True`` it streams the file at real time followed by silence, as a microphone would, and
the server's speech detection ends the turn. For each turn it prints the transcript, the
streamed reply text and the server's metrics, and keeps the reply audio for a WAV file.
"""

from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path
from typing import TextIO

import attrs
import trio
import trio_websocket

from . import protocol as p
from .audio_files import read_as_wire_pcm, write_wire_pcm

FRAME_BYTES = 20 * p.BYTES_PER_MS


@attrs.frozen(kw_only=True)
class TurnInput:
    wav: Path | None = None
    text: str | None = None


@attrs.define
class TurnReport:
    turn_id: str = ""
    transcript: str = ""
    reply_text: str = ""
    audio: bytearray = attrs.field(factory=bytearray)
    done: p.ResponseDone | None = None
    errors: list[p.Error] = attrs.field(factory=list)
    client_ttfb_ms: float | None = None


async def _receive_event(ws: trio_websocket.WebSocketConnection, report: TurnReport | None, started: float):
    message = await ws.get_message()
    if isinstance(message, bytes):
        if report is not None:
            if report.client_ttfb_ms is None:
                report.client_ttfb_ms = (time.monotonic() - started) * 1000
            report.audio += message
        return None
    return p.parse_server_event(message)


async def send_audio(ws: trio_websocket.WebSocketConnection, pcm: bytes, *, realtime: bool) -> None:
    """Send wire-format PCM in 20 ms frames, at real time if asked (as a microphone would)."""
    next_at = trio.current_time()
    for offset in range(0, len(pcm), FRAME_BYTES):
        await ws.send_message(pcm[offset : offset + FRAME_BYTES])
        if realtime:
            next_at += 0.02
            await trio.sleep_until(next_at)


async def run_turn(
    ws: trio_websocket.WebSocketConnection,
    turn: TurnInput,
    *,
    vad: bool = False,
    realtime: bool = False,
    out: TextIO = sys.stdout,
) -> TurnReport:
    """Send one turn and collect its response until ``response.done``.

    With ``vad`` the audio goes at real time followed by 1.5 s of silence and no commit (the
    session must use server VAD), while the replies are read; otherwise it is committed (the
    session must not)."""
    if turn.wav is not None and vad:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(send_audio, ws, read_as_wire_pcm(turn.wav) + bytes(48_000), realtime=True))
            return await _collect(ws, vad=True, out=out)
    if turn.wav is not None:
        await send_audio(ws, read_as_wire_pcm(turn.wav), realtime=realtime)
        await ws.send_message(p.encode(p.InputAudioCommit()))
    else:
        await ws.send_message(p.encode(p.InputText(text=turn.text or "")))
    return await _collect(ws, vad=vad, out=out)


async def _collect(ws: trio_websocket.WebSocketConnection, *, vad: bool, out: TextIO) -> TurnReport:
    """Read the response to the turn just sent, until its ``response.done``."""
    report = TurnReport()
    started = time.monotonic()
    while True:
        event = await _receive_event(ws, report, started)
        match event:
            case p.ResponseCreated(turn_id=turn_id):
                report.turn_id = turn_id
            case p.TranscriptFinal(text=text):
                report.transcript = text
                print(f"you:  {text}", file=out)
                print("bot:  ", end="", file=out, flush=True)
            case p.ResponseTextDelta(delta=delta):
                report.reply_text += delta
                print(delta, end="", file=out, flush=True)
            case p.Error() as error:
                report.errors.append(error)
                print(f"\nerror: {error.code}: {error.message}", file=out)
                if error.turn_id is None and not report.turn_id:
                    return report  # the turn was refused before it began
            case p.ResponseDone() as done:
                report.done = done
                metrics = ", ".join(f"{k}={v}" for k, v in attrs.asdict(done.metrics).items() if v is not None)
                print(f"\n[{done.status}] {metrics}", file=out)
                if vad and done.status == "interrupted":
                    # Server VAD ended a turn at a pause and the speech went on: the answer to
                    # the whole utterance is still to come.
                    report = TurnReport()
                    continue
                return report


async def configure(ws: trio_websocket.WebSocketConnection, *, instructions: str | None = None, vad: bool) -> None:
    """Set the session's instructions and turn detection; wait for ``session.updated``."""
    patch = p.SessionPatch(
        instructions=instructions, turn_detection=p.TurnDetectionPatch(type="server_vad" if vad else "none")
    )
    await ws.send_message(p.encode(p.SessionUpdate(session=patch)))
    while not isinstance(await _receive_event(ws, None, 0), p.SessionUpdated):
        pass


async def talk(
    url: str,
    turns: list[TurnInput],
    *,
    instructions: str | None = None,
    out_wav: Path | None = None,
    vad: bool = False,
    realtime: bool = False,
    out: TextIO = sys.stdout,
) -> list[TurnReport]:
    """Hold one conversation of ``turns`` with the server at ``url``."""
    reports = []
    async with trio_websocket.open_websocket_url(url) as ws:
        created = p.parse_server_event(await ws.get_message())
        assert isinstance(created, p.SessionCreated), created
        await configure(ws, instructions=instructions, vad=vad)
        for index, turn in enumerate(turns, start=1):
            report = await run_turn(ws, turn, vad=vad, realtime=realtime, out=out)
            reports.append(report)
            if out_wav is not None and report.audio:
                path = out_wav if len(turns) == 1 else out_wav.with_name(f"{out_wav.stem}_{index}{out_wav.suffix}")
                write_wire_pcm(path, bytes(report.audio))
                print(f"reply audio: {path} ({len(report.audio) / p.BYTES_PER_MS / 1000:.2f} s)", file=out)
    return reports
