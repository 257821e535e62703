"""A test client for sessions over a MemoryTransport, and task counting for leak checks."""

from __future__ import annotations

import json
import math
from contextlib import asynccontextmanager

import attrs
import trio
import trio.lowlevel

from voiceorch import protocol as p
from voiceorch.engines.base import Engines
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, FakeVAD
from voiceorch.session import Session, SessionSettings, memory_transport_pair

#: Sessions where the client ends each turn with input_audio.commit (no server VAD).
PUSH_TO_TALK = SessionSettings(turn_detection=p.TurnDetection(type="none"))


def fake_engines(**kwargs) -> Engines:
    return Engines(
        stt=kwargs.pop("stt", FakeSTT()),
        llm=kwargs.pop("llm", FakeLLM()),
        tts=kwargs.pop("tts", FakeTTS()),
        vad=kwargs.pop("vad", FakeVAD()),
        tools=kwargs.pop("tools", None),
        end_of_turn=kwargs.pop("end_of_turn", None),
        text_end_of_turn=kwargs.pop("text_end_of_turn", None),
    )


@attrs.define
class Client:
    """The client's end: sends frames, and logs everything the server sends, in order."""

    transport: object
    session: Session
    log: list = attrs.field(factory=list)  # protocol events and bytes, in arrival order
    #: One microphone: concurrent streams of audio take turns (see test_barge_in.stream).
    microphone: trio.Lock = attrs.field(factory=trio.Lock)
    _inbox: trio.MemoryReceiveChannel | None = None

    async def send(self, message: dict | bytes) -> None:
        await self.transport.send(message if isinstance(message, bytes) else json.dumps(message))

    async def next(self):
        return await self._inbox.receive()

    async def until(self, event_type: str, **match) -> object:
        """Receive until an event of ``event_type`` (with the given field values) arrives."""
        while True:
            item = await self.next()
            if not isinstance(item, bytes) and item.TYPE == event_type:
                if all(getattr(item, k) == v for k, v in match.items()):
                    return item

    def events(self, event_type: str | None = None) -> list:
        return [e for e in self.log if not isinstance(e, bytes) and (event_type is None or e.TYPE == event_type)]


@asynccontextmanager
async def connected(engines: Engines | None = None, settings: SessionSettings = PUSH_TO_TALK):
    """Run a Session over memory channels; yields the Client once ``session.created`` arrived."""
    server_end, client_end = memory_transport_pair()
    session = Session(server_end, engines or fake_engines(), settings, session_id="sess_test")
    inbox_send, inbox_recv = trio.open_memory_channel(math.inf)
    client = Client(client_end, session, inbox=inbox_recv)

    async def pump() -> None:
        with inbox_send:
            while True:
                try:
                    raw = await client_end.receive()
                except trio.EndOfChannel:
                    return
                item = raw if isinstance(raw, bytes) else p.parse_server_event(raw)
                client.log.append(item)
                inbox_send.send_nowait(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        nursery.start_soon(pump)
        created = await client.until("session.created")
        assert created.session_id == "sess_test"
        yield client
        await client_end.close()


def count_tasks() -> int:
    """All tasks alive in this run (a leak check compares it before and after)."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


def check_framing(log: list) -> None:
    """Every audio frame lies between its response's ``response.created`` and ``response.done``."""
    open_turn = None
    for item in log:
        if isinstance(item, bytes):
            assert open_turn is not None, "audio frame outside any response"
        elif item.TYPE == "response.created":
            assert open_turn is None, "two responses overlap"
            open_turn = item.turn_id
        elif item.TYPE == "response.done":
            assert item.turn_id == open_turn
            open_turn = None
