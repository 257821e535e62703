"""The Realtime endpoint's transport around an unchanged Session, with fake engines and Trio's
MockClock (autojump): no sockets, no models. And the two rules of the session core that
``conversation.item.truncate`` needs (what the user heard of a reply).

The client side here is a memory "WebSocket" with trio-websocket's three methods; every frame
it receives is validated against the official openai SDK's model of its event.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from contextlib import asynccontextmanager

import attrs
import trio
import trio_websocket
from trio.testing import wait_all_tasks_blocked

from realtime_harness import checked
from session_harness import fake_engines
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeLLM, FakeSTT
from voiceorch.realtime import RealtimeTranslator
from voiceorch.server.realtime_ws import RealtimeTransport, realtime_settings
from voiceorch.session import Session, SessionSettings, memory_transport_pair

FRAME_MS = 20


# --- a memory WebSocket and a Realtime client over it --------------------------------------------


class MemoryWebSocket:
    """trio-websocket's get_message / send_message / aclose, over memory channels."""

    def __init__(self, inbound: trio.MemoryReceiveChannel, outbound: trio.MemorySendChannel) -> None:
        self._inbound, self._outbound = inbound, outbound
        self.closed: tuple[int, str | None] | None = None

    def _gone(self) -> trio_websocket.ConnectionClosed:
        return trio_websocket.ConnectionClosed(trio_websocket.CloseReason(*(self.closed or (1000, None))))

    async def get_message(self):
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._gone() from None

    async def send_message(self, message) -> None:
        try:
            await self._outbound.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._gone() from None

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is None:
            self.closed = (code, reason)
        self._inbound.close()
        self._outbound.close()


@attrs.define
class RealtimeClient:
    send_channel: trio.MemorySendChannel
    inbox: trio.MemoryReceiveChannel
    session: Session
    log: list[dict] = attrs.Factory(list)
    microphone: trio.Lock = attrs.Factory(trio.Lock)

    async def send(self, event: dict) -> None:
        await self.send_channel.send(json.dumps(event))

    async def next(self) -> dict:
        return await self.inbox.receive()

    async def until(self, event_type: str, **match) -> dict:
        while True:
            event = await self.next()
            if event["type"] == event_type and all(event.get(k) == v for k, v in match.items()):
                return event

    def of_type(self, event_type: str) -> list[dict]:
        return [e for e in self.log if e["type"] == event_type]


@asynccontextmanager
async def realtime_connected(engines=None, settings: SessionSettings = SessionSettings()):
    """A Session behind a RealtimeTransport; yields the client once ``session.created`` arrived."""
    to_server_send, to_server_recv = trio.open_memory_channel(0)
    to_client_send, to_client_recv = trio.open_memory_channel(0)
    ws = MemoryWebSocket(to_server_recv, to_client_send)
    ids = itertools.count(1)
    translator = RealtimeTranslator(model="gpt-realtime", new_id=lambda prefix: f"{prefix}_{next(ids)}")
    transport = RealtimeTransport(ws, translator)
    session = Session(transport, engines or fake_engines(), realtime_settings(settings), session_id="sess_rt")
    inbox_send, inbox_recv = trio.open_memory_channel(math.inf)
    client = RealtimeClient(to_server_send, inbox_recv, session)

    async def pump() -> None:
        with inbox_send:
            async for frame in to_client_recv:
                event = checked(frame)
                client.log.append(event)
                inbox_send.send_nowait(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        nursery.start_soon(pump)
        created = await client.until("session.created")
        assert created["session"]["id"] == "sess_rt"
        yield client
        to_server_send.close()


def speech24(ms: int) -> bytes:
    return (1000).to_bytes(2, "little", signed=True) * (24 * ms)


def silence24(ms: int) -> bytes:
    return bytes(2 * 24 * ms)


async def stream(client: RealtimeClient, *parts: tuple[str, int]) -> None:
    """Append ("speech"|"silence", ms) parts in 20 ms appends at real time."""
    async with client.microphone:
        for kind, ms in parts:
            for _ in range(ms // FRAME_MS):
                pcm = speech24(FRAME_MS) if kind == "speech" else silence24(FRAME_MS)
                await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})
                await trio.sleep(FRAME_MS / 1000)


def user_text(text: str) -> dict:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


# --- Realtime over the session core ---------------------------------------------------------


async def test_a_text_turn_streams_transcript_and_24khz_audio_then_completes(autojump_clock):
    async with realtime_connected() as client:
        await client.send(user_text("hi"))
        added = await client.until("conversation.item.added")
        await client.send({"type": "response.create"})
        done = await client.until("response.done")
    response = done["response"]
    assert response["status"] == "completed"
    transcript = "".join(e["delta"] for e in client.of_type("response.output_audio_transcript.delta"))
    assert transcript == "Sure thing. Here is a short answer. Anything else?"
    assert response["output"][0]["content"][0]["transcript"] == transcript
    audio = b"".join(base64.b64decode(e["delta"]) for e in client.of_type("response.output_audio.delta"))
    assert len(audio) == 2 * 24 * 2880  # the fake reply's 2880 ms, at 24 kHz
    assert response["voiceorch"]["metrics"]["audio_ms"] == 2880.0
    [created] = client.of_type("response.created")
    assert created["response"]["id"] == response["id"]
    assert client.session.conversation.messages[0].content == added["item"]["content"][0]["text"] == "hi"
    assert len({e["event_id"] for e in client.log}) == len(client.log)


async def test_a_reply_cut_at_the_token_limit_ends_incomplete(autojump_clock):
    async with realtime_connected(fake_engines(llm=FakeLLM(finish_reason="length"))) as client:
        await client.send(user_text("tell me everything"))
        await client.send({"type": "response.create"})
        done = await client.until("response.done")
    response = done["response"]
    assert response["status"] == "incomplete"
    assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens", "error": None}
    assert response["output"][0]["status"] == "incomplete"
    audio = b"".join(base64.b64decode(e["delta"]) for e in client.of_type("response.output_audio.delta"))
    assert len(audio) == 2 * 24 * 2880  # what was said was all played


async def test_push_to_talk_commit_then_response_create_makes_one_response(autojump_clock):
    async with realtime_connected(fake_engines(stt=FakeSTT(text="what time is it"))) as client:
        await client.send(
            {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
        )
        updated = await client.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        pcm = speech24(1000)
        for offset in range(0, len(pcm), 9600):  # 200 ms appends, all at once
            await client.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm[offset : offset + 9600]).decode()}
            )
        await client.send({"type": "input_audio_buffer.commit"})
        await client.send({"type": "response.create"})
        committed = await client.until("input_audio_buffer.committed")
        transcribed = await client.until("conversation.item.input_audio_transcription.completed")
        done = await client.until("response.done")
        await trio.sleep(1)
        assert client.log[-1] is done  # the response.create started no second response
    assert transcribed["item_id"] == committed["item_id"]
    assert transcribed["transcript"] == "what time is it"
    assert transcribed["usage"]["seconds"] == 1.0
    assert done["response"]["status"] == "completed"
    assert len(client.of_type("response.created")) == 1


PUSH_TO_TALK_UPDATE = {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}


async def upload(client: RealtimeClient, seconds: int) -> None:
    """Append ``seconds`` of speech all at once, one second per append (a whole file)."""
    for _ in range(seconds):
        await client.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(speech24(1000)).decode()})


async def test_whole_file_uploads_turn_after_turn_are_never_too_fast(autojump_clock):
    async with realtime_connected() as client:
        await client.send(PUSH_TO_TALK_UPDATE)
        await client.until("session.updated")
        start = trio.current_time()
        for _ in range(10):  # a 12 s file, then wait for the whole reply (2.9 s of audio)
            await upload(client, 12)
            await client.send({"type": "input_audio_buffer.commit"})
            done = await client.until("response.done")
            assert done["response"]["status"] == "completed"
        elapsed_s = trio.current_time() - start
    assert client.of_type("error") == []
    assert [e["usage"]["seconds"] for e in client.of_type("conversation.item.input_audio_transcription.completed")] == [
        12.0
    ] * 10
    # 120 s of audio in about 35 s: counted against real time it would have run more than its
    # 60 s bound ahead, and been dropped, by the seventh upload.
    assert 120 - elapsed_s > SessionSettings().max_audio_ahead_ms / 1000


async def test_realtime_audio_may_run_ahead_of_four_times_real_time_and_no_further(autojump_clock):
    assert realtime_settings(SessionSettings()).max_audio_speed == 4.0
    assert realtime_settings(SessionSettings(max_audio_ahead_ms=None)).max_audio_ahead_ms is None  # 0: no bound
    async with realtime_connected() as client:
        await client.send(PUSH_TO_TALK_UPDATE)
        await client.until("session.updated")
        await upload(client, 60)  # a whole turn at once: the bound
        await client.send({"type": "input_audio_buffer.commit"})  # (a turn holds 60 s at most)
        await trio.sleep(5)  # at 4x real time, 20 s of it is due by now
        await upload(client, 19)
        await wait_all_tasks_blocked()
        assert client.of_type("error") == []
        await upload(client, 2)  # beyond 60 s ahead of 4x real time
        error = await client.until("error")
    assert error["error"]["code"] == "input_audio_too_fast"
    assert "4 times real time" in error["error"]["message"]


async def test_barge_in_cancels_the_reply_and_truncate_keeps_only_what_was_heard(autojump_clock):
    llm = FakeLLM()
    engines = fake_engines(stt=FakeSTT(texts=["question", "wait"]), llm=llm)
    async with realtime_connected(engines) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 600), ("silence", 700))
            first_audio = await client.until("response.output_audio.delta")
            await trio.sleep(1.5)  # the reply plays on, well into its second sentence
            nursery.start_soon(stream, client, ("speech", 500), ("silence", 700))
            started = await client.until("input_audio_buffer.speech_started")
            # The client stops playback at once and tells how much it really played.
            await client.send(
                {
                    "type": "conversation.item.truncate",
                    "item_id": first_audio["item_id"],
                    "content_index": 0,
                    "audio_end_ms": 500,
                }
            )
            cut = await client.until("response.done")
            second = await client.until("response.done")
    assert cut["response"]["id"] == first_audio["response_id"]
    assert (cut["response"]["status"], cut["response"]["status_details"]["reason"]) == ("cancelled", "turn_detected")
    assert client.log.index(started) < client.log.index(cut)  # cancelled on speech_started, as upstream
    [truncated] = client.of_type("conversation.item.truncated")
    assert (truncated["item_id"], truncated["audio_end_ms"]) == (first_audio["item_id"], 500)
    # No audio of the cut response after the interruption was decided.
    assert not any(
        e["type"] == "response.output_audio.delta" and e["response_id"] == cut["response"]["id"]
        for e in client.log[client.log.index(started) :]
    )
    assert second["response"]["status"] == "completed"
    # The next LLM request carried only what the user heard: 500 ms of "Sure thing." (660 ms).
    assert [(m.role, m.content) for m in llm.requests[1]][1:] == [
        ("user", "question"),
        ("assistant", "Sure"),
        ("user", "wait"),
    ]
    # The user items: one per spoken turn, each keeping its id from speech_started on.
    speech_items = [e["item_id"] for e in client.of_type("input_audio_buffer.speech_started")]
    committed_items = [e["item_id"] for e in client.of_type("input_audio_buffer.committed")]
    assert speech_items == committed_items and len(set(committed_items)) == 2


async def test_a_truncate_beyond_the_audio_sent_is_an_error_and_the_session_goes_on(autojump_clock):
    async with realtime_connected() as client:
        await client.send(user_text("hi"))
        await client.send({"type": "response.create"})
        done = await client.until("response.done")
        item_id = done["response"]["output"][0]["id"]
        await client.send(
            {
                "type": "conversation.item.truncate",
                "event_id": "t1",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": 5000,
            }
        )
        error = await client.until("error")
        assert (error["error"]["code"], error["error"]["param"], error["error"]["event_id"]) == (
            "invalid_value",
            "audio_end_ms",
            "t1",
        )
        await client.send(
            {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0, "audio_end_ms": 500}
        )
        await client.until("conversation.item.truncated")
        await wait_all_tasks_blocked()
        # A completed reply that the client says it played only in part is remembered in part.
        assert [m.content for m in client.session.conversation.messages] == ["hi", "Sure"]
        await client.send(user_text("again"))
        await client.send({"type": "response.create"})
        assert (await client.until("response.done"))["response"]["status"] == "completed"


async def test_response_cancel_and_an_unsupported_format_in_the_realtime_dialect(autojump_clock):
    async with realtime_connected() as client:
        await client.send({"type": "response.cancel"})
        error = await client.until("error")
        assert error["error"]["code"] == "response_cancel_not_active"
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/pcmu"}}}},
            }
        )
        error = await client.until("error")
        assert error["error"]["code"] == "unsupported_audio_format"
        await client.send(user_text("hi"))
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
        assert (done["response"]["status"], done["response"]["status_details"]["reason"]) == (
            "cancelled",
            "client_cancelled",
        )
        assert client.of_type("session.updated") == []


async def test_a_client_that_stops_reading_is_closed_after_the_send_timeout(autojump_clock):
    to_server_send, to_server_recv = trio.open_memory_channel(0)
    to_client_send, to_client_recv = trio.open_memory_channel(0)
    ws = MemoryWebSocket(to_server_recv, to_client_send)
    session = Session(RealtimeTransport(ws, RealtimeTranslator()), fake_engines(), realtime_settings(SessionSettings()))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        assert checked(await to_client_recv.receive())["type"] == "session.created"
        # From now on the client reads nothing: the error that answers this frame cannot go out.
        await to_server_send.send('{"type": "dance"}')
        sent_at = trio.current_time()
    assert ws.closed == (1008, "send timeout: the client stopped reading")
    assert trio.current_time() - sent_at == 10


async def test_a_session_whose_client_stopped_reading_ends_at_once_when_told_to(autojump_clock):
    """The translator's answers go out through the session's one writer: a client that reads
    nothing holds no second sender, so ending the session is not delayed by a send."""
    to_server_send, to_server_recv = trio.open_memory_channel(0)
    to_client_send, to_client_recv = trio.open_memory_channel(0)
    ws = MemoryWebSocket(to_server_recv, to_client_send)
    session = Session(RealtimeTransport(ws, RealtimeTranslator()), fake_engines(), realtime_settings(SessionSettings()))
    ended_after = None
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal ended_after
            await session.run()
            ended_after = trio.current_time() - told_at

        nursery.start_soon(run)
        assert checked(await to_client_recv.receive())["type"] == "session.created"
        await to_server_send.send('{"type": "dance"}')  # its error cannot go out: nobody reads
        await to_server_send.send(json.dumps(user_text("still there?")))  # the reader goes on
        await trio.sleep(1)
        told_at = trio.current_time()
        session.end(1001, "server shutting down")
    assert ended_after == 0  # (the session's own close is bounded at 2 s; the shield held up to 12 s)
    assert ws.closed == (1001, "server shutting down")


# --- the session core: what a playback report does --------------------------------------------

VAD = SessionSettings()


def speech16(ms: int) -> bytes:
    return (1000).to_bytes(2, "little", signed=True) * (16 * ms)


class HoldingTransport:
    """Holds the session's writer on the first ``response.interrupted`` until ``release``."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.holding = trio.Event()
        self.release = trio.Event()

    async def receive(self):
        return await self.inner.receive()

    async def send(self, message) -> None:
        if isinstance(message, str) and '"response.interrupted"' in message and not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        await self.inner.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.inner.close(code, reason)


async def test_a_playback_report_that_arrives_while_the_response_is_ending_still_counts(autojump_clock):
    server_end, client_end = memory_transport_pair()
    transport = HoldingTransport(server_end)
    session = Session(transport, fake_engines(stt=FakeSTT(texts=["question", "wait"])), VAD)
    received: list = []

    async def read() -> None:
        while True:
            message = await client_end.receive()
            received.append(message if isinstance(message, bytes) else p.parse_server_event(message))

    async def speak(*parts: tuple[bytes, int]) -> None:
        for chunk, ms in parts:
            for _ in range(ms // FRAME_MS):
                await client_end.send(chunk[: 32 * FRAME_MS])
                await trio.sleep(FRAME_MS / 1000)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        nursery.start_soon(read)
        await speak((speech16(600), 600), (bytes(32 * 700), 700))
        while not any(isinstance(m, bytes) for m in received):
            await trio.sleep(0.01)
        await trio.sleep(1.5)
        nursery.start_soon(speak, (speech16(500), 500))
        await transport.holding.wait()
        # The response has fixed what was heard (its estimate) and is ending: report now.
        await client_end.send(p.encode(p.PlaybackPosition(turn_id="turn_1", played_ms=500)))
        await wait_all_tasks_blocked()
        transport.release.set()
        while not any(isinstance(m, p.ResponseDone) for m in received):
            await trio.sleep(0.01)
        await wait_all_tasks_blocked()
        [interrupted] = [m for m in received if isinstance(m, p.ResponseInterrupted)]
        assert interrupted.heard_text.startswith("Sure thing. Here")  # the estimate, sent already
        assert [m.content for m in session.conversation.messages] == ["question", "Sure"]
        nursery.cancel_scope.cancel()


async def test_a_playback_report_during_a_reply_that_then_completes_is_not_used(autojump_clock):
    from session_harness import connected

    async with connected(fake_engines()) as client:
        await client.send({"type": "input_text", "text": "hi"})
        created = await client.until("response.created")
        await client.send({"type": "playback.position", "turn_id": created.turn_id, "played_ms": 100})
        await client.until("response.done")
        await wait_all_tasks_blocked()
        assert [m.content for m in client.session.conversation.messages] == [
            "hi",
            "Sure thing. Here is a short answer. Anything else?",
        ]
        # Once it is done, a report revises it: the client knows it stopped playing early.
        await client.send({"type": "playback.position", "turn_id": created.turn_id, "played_ms": 500})
        await wait_all_tasks_blocked()
        assert [m.content for m in client.session.conversation.messages] == ["hi", "Sure"]
        # An older turn's report changes nothing.
        await client.send({"type": "input_text", "text": "more"})
        await client.until("response.done")
        await client.send({"type": "playback.position", "turn_id": created.turn_id, "played_ms": 0})
        await wait_all_tasks_blocked()
        assert [m.content for m in client.session.conversation.messages][:2] == ["hi", "Sure"]


async def test_text_items_beyond_the_bound_are_refused_in_order_and_the_session_goes_on(autojump_clock):
    from voiceorch.realtime.translator import MAX_PENDING_TEXT_ITEMS

    async with realtime_connected() as client:
        for i in range(MAX_PENDING_TEXT_ITEMS + 1):
            await client.send(user_text(f"part {i}"))
        await client.send({"type": "response.create"})
        done = await client.until("response.done")
        await client.send(user_text("and now?"))
        await client.send({"type": "response.create"})
        again = await client.until("response.done")
    kinds = [e["type"] for e in client.log]
    error = kinds.index("error")
    assert kinds.count("error") == 1 and client.log[error]["error"]["code"] == "input_text_buffer_full"
    # The refusal comes where its frame came: after the items before it, before the response.
    assert kinds[:error].count("conversation.item.done") == MAX_PENDING_TEXT_ITEMS
    assert error < kinds.index("response.created")
    assert done["response"]["status"] == again["response"]["status"] == "completed"
    messages = [m.content for m in client.session.conversation.messages]
    assert messages[0] == "\n".join(f"part {i}" for i in range(MAX_PENDING_TEXT_ITEMS)) and messages[2] == "and now?"
