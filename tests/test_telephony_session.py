"""The telephony transport around an unchanged Session, with fake engines and Trio's MockClock
(autojump): no sockets. The carrier side is a memory "WebSocket" with trio-websocket's three
methods, driven by the same carrier client as the loopback tests."""

from __future__ import annotations

import math

import trio

from test_realtime_session import MemoryWebSocket
from test_telephony_ws import START, Carrier, dtmf_frame, engines
from voiceorch.server.telephony_ws import TELEPHONY_PLAYBACK_LEAD_MS, TelephonyTransport, telephony_settings
from voiceorch.session import Session, SessionSettings
from voiceorch.telephony import TwilioTranslator


async def run_call(scenario) -> Session:
    to_server_send, to_server_recv = trio.open_memory_channel(math.inf)
    to_carrier_send, to_carrier_recv = trio.open_memory_channel(math.inf)
    server_ws = MemoryWebSocket(to_server_recv, to_carrier_send)
    carrier_ws = MemoryWebSocket(to_carrier_recv, to_server_send)
    settings = telephony_settings(SessionSettings())
    assert settings.playback_lead_ms == TELEPHONY_PLAYBACK_LEAD_MS
    session = Session(TelephonyTransport(server_ws, TwilioTranslator()), engines(), settings, session_id="sess_call")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(session.run)
        await carrier_ws.send_message(START["twilio"])
        phone = Carrier(carrier_ws, "twilio")
        nursery.start_soon(phone.stream)
        nursery.start_soon(phone.read)
        await scenario(phone, session)
        nursery.cancel_scope.cancel()
    return session


async def test_a_barge_in_over_the_session_under_mock_time(autojump_clock):
    async def scenario(phone: Carrier, session: Session) -> None:
        await trio.sleep(0.1)
        phone.play_until_ms = 760  # "Sure thing." (660 ms) and no more; then the playback stalls
        await phone.send(dtmf_frame("twilio", phone.next_seq(), "#"))
        await phone.held_mark.wait()
        await trio.sleep(1.0)
        phone.level = 4000
        with trio.fail_after(5):
            await phone.cleared.wait()
        phone.level = 0
        while session.conversation.messages[-1:] == [] or session._unfinished:
            await trio.sleep(0.02)
        history = [m.content for m in session.conversation.messages]
        assert history == ["The caller pressed # on the keypad.", "Sure thing."]

    await run_call(scenario)


async def test_the_position_after_a_clear_reaches_the_session_while_the_carrier_sends_nothing(autojump_clock):
    async def scenario(phone: Carrier, session: Session) -> None:
        await trio.sleep(0.1)
        phone.play_until_ms = 760
        await phone.send(dtmf_frame("twilio", phone.next_seq(), "#"))
        await phone.held_mark.wait()
        phone.level = 4000
        with trio.fail_after(5):
            await phone.cleared.wait()
        # From the clear on, the carrier is silent: the wake of the transport's receive must
        # still hand the session its playback.position.
        phone.silent = True
        with trio.fail_after(5):
            while session.conversation.messages[-1:] == [] or session._unfinished:
                await trio.sleep(0.02)
        assert session.conversation.messages[-1].content == "Sure thing."

    await run_call(scenario)


async def test_reply_audio_reaches_the_carrier_well_before_it_plays(autojump_clock):
    """The carrier starts playing the reply when its first audio arrives and plays on without a
    gap only if each later piece arrives before its turn: soxr lets 8 kHz audio out in ~104 ms
    blocks, so the playback lead must cover a block and leave the carrier's jitter buffer room."""

    async def scenario(phone: Carrier, session: Session) -> None:
        await trio.sleep(0.1)
        await phone.send(dtmf_frame("twilio", phone.next_seq(), "#"))
        while phone.audio_ms < 2500:  # "Sure thing. Here is a short answer." and more
            await trio.sleep(0.05)
        start = phone.media_at[0][0]
        margins_ms = [(start + ms / 1000 - at) * 1000 for at, ms in phone.media_at[1:]]
        assert len(margins_ms) >= 20 and min(margins_ms) >= 50, margins_ms

    await run_call(scenario)
