"""Session core hardening under Trio's MockClock (autojump): a speculation confirmed when the
audio stops, control before reply audio with a client that does not read, and the shutdown's
refusals and drain. Fake engines; audio as in test_barge_in (speech at amplitude 1000, silence
zeros), 20 ms frames at real time."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from session_harness import PUSH_TO_TALK, connected, fake_engines
from test_barge_in import speech, stream
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeSTT, FakeTTS
from voiceorch.session import Session, SessionSettings, memory_transport_pair
from voiceorch.session.turn_taking import AUDIO_STOPPED_MARGIN_S


async def test_a_client_that_stops_sending_inside_the_pause_gets_its_answer_then_idles_out(autojump_clock):
    # The file ends 300 ms into the pause (speculation started at 160 ms, window 500 ms).
    settings = SessionSettings(idle_timeout_s=3)
    engines = fake_engines(stt=FakeSTT(text="what time is it"))
    async with connected(engines, settings) as client:
        await stream(client, ("speech", 600), ("silence", 300))
        stopped_sending = trio.current_time()
        with trio.fail_after(10):
            committed = await client.until("input_audio.committed")
            confirmed_after = trio.current_time() - stopped_sending
            done = await client.until("response.done")
            done_at = trio.current_time()
        with trio.fail_after(10):
            while client.session.transport.close_code is None:
                await trio.sleep(0.1)
        closed_at = trio.current_time()
    assert committed.turn_id == done.turn_id == "turn_1" and done.status == "completed"
    # The rest of the 500 ms window by the wall clock, plus the margin that tells stopped audio from jitter.
    assert 0.15 + AUDIO_STOPPED_MARGIN_S <= confirmed_after <= 0.25 + AUDIO_STOPPED_MARGIN_S
    assert [e.TYPE for e in client.events() if e.TYPE.startswith("input_audio.speech")] == [
        "input_audio.speech_started",
        "input_audio.speech_stopped",
    ]
    assert (client.session.transport.close_code, client.session.transport.close_reason) == (1000, "idle timeout")
    assert 2.9 <= closed_at - done_at <= 3.2  # idle from the reply's end: the speculation was no activity


async def test_an_unconfirmed_speculation_is_not_activity_for_the_idle_timeout(autojump_clock):
    # speculate, then confirm only after a window longer than the idle timeout: the session idles
    # out while the speculation is pending (it would have been held open before).
    vad = p.TurnDetection(silence_duration_ms=5000)
    settings = SessionSettings(idle_timeout_s=2, turn_detection=vad)
    async with connected(fake_engines(), settings) as client:
        await stream(client, ("speech", 600), ("silence", 300))
        with trio.fail_after(60):
            while client.session.transport.close_code is None:
                await trio.sleep(0.1)
    assert client.session.transport.close_reason == "idle timeout"
    assert client.events("input_audio.committed") == [] and client.events("response.created") == []


async def test_a_muted_microphone_before_any_speech_still_idles_out(autojump_clock):
    settings = SessionSettings(idle_timeout_s=2)
    async with connected(fake_engines(), settings) as client:
        await stream(client, ("silence", 400))
        with trio.fail_after(10):
            while client.session.transport.close_code is None:
                await trio.sleep(0.1)
    assert client.session.transport.close_reason == "idle timeout"
    assert client.events("input_audio.speech_started") == []


class StuckTransport:
    """Wraps the server's end: once ``stuck`` is set, ``send`` blocks (a client that stopped
    reading, within the send timeout)."""

    def __init__(self, inner):
        self.inner = inner
        self.stuck = False
        self.sends_blocked = 0

    async def receive(self):
        return await self.inner.receive()

    async def send(self, message):
        if self.stuck:
            self.sends_blocked += 1
            await trio.sleep_forever()
        await self.inner.send(message)

    async def close(self, code=1000, reason=""):
        await self.inner.close(code, reason)

    @property
    def close_code(self):
        return self.inner.close_code


@pytest.mark.parametrize("interruption", ["immediate", "pause_and_decide"])
async def test_barge_in_cuts_the_reply_at_once_while_the_writer_is_stuck_on_a_slow_client(autojump_clock, interruption):
    server_end, client_end = memory_transport_pair()
    transport = StuckTransport(server_end)
    detection = attrs.evolve(PUSH_TO_TALK.turn_detection, interruption=interruption)
    settings = SessionSettings(send_timeout_s=60, turn_detection=detection)
    session = Session(transport, fake_engines(tts=FakeTTS(ms_per_char=100)), settings)
    got = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)

        async def pump():
            while True:
                try:
                    got.append(await client_end.receive())
                except trio.EndOfChannel:
                    return

        nursery.start_soon(pump)
        await client_end.send('{"type": "input_text", "text": "talk to me"}')
        while not any(isinstance(m, bytes) for m in got):
            await trio.sleep(0.01)
        await client_end.send('{"type": "session.update", "session": {"turn_detection": {"type": "server_vad"}}}')
        await trio.sleep(0.1)
        turn = session._unfinished[0]
        transport.stuck = True  # the client stops reading; the reply goes on being produced
        await trio.sleep(0.5)
        assert transport.sends_blocked == 1 and not turn.scope.cancel_called
        started = trio.current_time()
        for _ in range(40):  # 800 ms of speech: well past interrupt_min_speech_ms
            await client_end.send(speech(20))
            await trio.sleep(0.02)
            if turn.scope.cancel_called or turn.paused_at is not None:
                break
        interrupted_after = trio.current_time() - started
        await wait_all_tasks_blocked()
        if interruption == "immediate":
            assert turn.scope.cancel_called and turn.interrupted
        else:  # paused now (its audio stops as at once), decided later
            assert turn.paused_at is not None and not turn.scope.cancel_called
        assert interrupted_after < 1.0  # long before the 60 s send timeout
        sent_ms = turn.playback.sent_ms
        await trio.sleep(2)
        assert turn.playback.sent_ms == sent_ms  # no audio frame handed over since
        assert session._outbox.statistics().data_senders_waiting <= 1  # only its closing events wait
        # the reader kept reading: its control events queued behind the stuck writer
        assert session._outbox.statistics().control_queued >= 1
        session.end(1001, "test over")


async def test_the_reader_waits_only_once_the_control_lane_is_full(autojump_clock):
    server_end, client_end = memory_transport_pair()
    transport = StuckTransport(server_end)
    settings = SessionSettings(send_timeout_s=5, turn_detection=PUSH_TO_TALK.turn_detection)
    session = Session(transport, fake_engines(), settings)
    sent = 0
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            await client_end.receive()  # session.created
            transport.stuck = True

            async def flood():
                nonlocal sent
                with trio.move_on_after(4):
                    while True:
                        await client_end.send('{"type": "bogus"}')  # each answered with an error
                        sent += 1

            await flood()
    # the writer stuck on its first error, 64 queued, then the reader waited (backpressure)
    assert 64 <= sent <= 67
    assert transport.close_code == 1008  # the send timeout ended it


async def test_the_drain_does_not_wait_for_turns_left_queued_when_the_session_ended(autojump_clock):
    server_end, client_end = memory_transport_pair(buffer=math.inf)
    transport = StuckTransport(server_end)
    session = Session(transport, fake_engines(), PUSH_TO_TALK)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await wait_all_tasks_blocked()
        transport.stuck = True  # the responder's first turn waits on the writer; the rest queue
        for n in range(3):
            await client_end.send(f'{{"type": "input_text", "text": "question {n}"}}')
        await trio.sleep(0.05)
        assert len(session._unfinished) == 3
        session.end(1001, "gone")
    started = trio.current_time()
    with trio.fail_after(1):
        await session.wait_responses_done()
    assert trio.current_time() == started


async def test_a_commit_while_shutting_down_is_refused_before_it_is_acknowledged(autojump_clock):
    async with connected() as client:
        await client.send(speech(400))
        client.session.stop_new_turns()
        await client.send({"type": "input_audio.commit"})
        refused = await client.until("error")
        await client.send({"type": "input_text", "text": "hello"})
        refused_text = await client.until("error")
        await wait_all_tasks_blocked()
    assert refused.code == refused_text.code == "server_shutting_down"
    assert client.events("input_audio.committed") == [] and client.events("response.created") == []


async def test_a_spoken_turn_ending_while_shutting_down_is_refused_before_it_is_acknowledged(autojump_clock):
    async with connected(fake_engines(), SessionSettings()) as client:
        await stream(client, ("speech", 600), ("silence", 100))  # a speculation is pending
        client.session.stop_new_turns()
        await stream(client, ("silence", 600))
        refused = await client.until("error")
        await wait_all_tasks_blocked()
    assert refused.code == "server_shutting_down"
    assert client.events("input_audio.committed") == [] and client.events("response.created") == []


# --- a reader that fell behind takes the frames already received in one go --------------------


@attrs.define
class _CountingVADStream:
    """A batchable VAD stream (as Silero's): every chunk is silence; records each request's size."""

    requests: list[int]

    def probabilities(self, chunks: list[bytes]) -> list[float]:
        self.requests.append(len(chunks))
        return [0.0] * len(chunks)


@attrs.define
class _CountingVAD:
    requests: list[int] = attrs.field(factory=list)

    def new_stream(self) -> _CountingVADStream:
        return _CountingVADStream(self.requests)


class _ReadyTransport:
    """A memory transport that, like ``WebSocketTransport``, tells the messages already received."""

    def __init__(self, inbound: trio.MemoryReceiveChannel, outbound: trio.MemorySendChannel) -> None:
        self._inbound, self._outbound = inbound, outbound

    async def receive(self):
        try:
            return await self._inbound.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None

    def receive_ready(self):
        try:
            return self._inbound.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def send(self, message) -> None:
        await self._outbound.send(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._outbound.aclose()


async def test_frames_waiting_in_the_transport_are_taken_in_together_each_checked_and_in_order():
    vad = _CountingVAD()
    to_server, server_inbox = trio.open_memory_channel(32)
    to_client, client_inbox = trio.open_memory_channel(math.inf)
    session = Session(_ReadyTransport(server_inbox, to_client), fake_engines(vad=vad), SessionSettings())
    frame = bytes(640)  # 20 ms of silence
    events: list[str] = []
    cleared = trio.Event()

    async def client() -> None:
        async for message in client_inbox:
            events.append(p.parse_server_event(message).TYPE)
            if events[-1] == "input_audio.cleared":
                cleared.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        nursery.start_soon(client)
        await wait_all_tasks_blocked()
        # All at once, before the reader runs: 5 frames, a malformed one, 5 more, then a control message.
        for message in [frame] * 5 + [b"\x00" * 3] + [frame] * 5 + ['{"type": "input_audio.clear"}']:
            to_server.send_nowait(message)
        with trio.fail_after(5):
            await cleared.wait()
        await to_server.aclose()
    assert events == ["session.created", "error", "input_audio.cleared"]  # the bad frame's error, then the clear
    # The 10 good frames (200 ms) went to speech detection together: 6 whole 32 ms chunks, one request.
    assert vad.requests == [6]
