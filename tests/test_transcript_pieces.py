"""Transcription during speech (``SessionSettings.transcribe_pieces``): pieces cut at the
speaker's pauses, ``transcript.delta`` in v1 and ``conversation.item.input_audio_transcription.delta``
in the Realtime dialect. Fake engines under Trio's MockClock (autojump)."""

from __future__ import annotations

import trio

from session_harness import connected, fake_engines
from test_barge_in import stream
from test_realtime_session import realtime_connected
from test_realtime_session import stream as stream24
from voiceorch.engines.fakes import FakeSTT
from voiceorch.session import SessionSettings

PIECES = SessionSettings(transcribe_pieces=True)
PARTS = [("speech", 600), ("silence", 300), ("speech", 600), ("silence", 800)]


def two_pieces() -> FakeSTT:
    return FakeSTT(texts=["I'd like to book a table for", "four people."], delay=0.1)


async def test_the_speech_is_transcribed_in_pieces_while_the_user_speaks(autojump_clock):
    stt = two_pieces()
    async with connected(fake_engines(stt=stt), PIECES) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, *PARTS)
            first = await client.until("transcript.delta")
            assert not client.events("input_audio.committed")  # while the user still speaks
            done = await client.until("response.done")
    assert first.delta == "I'd like to book a table for"
    assert [e.delta for e in client.events("transcript.delta")] == ["I'd like to book a table for", " four people."]
    assert [e.text for e in client.events("transcript.final")] == ["I'd like to book a table for four people."]
    assert done.status == "completed"
    # Two STT calls, one a piece, the second with the first's words as its prompt; none at the end.
    assert stt.prompts == [None, "I'd like to book a table for"]
    assert stt.calls[0] < 800 * 32 and stt.calls[1] < 1000 * 32
    assert client.session.conversation.messages[0].content == "I'd like to book a table for four people."


async def test_without_pieces_the_turn_is_transcribed_whole(autojump_clock):
    stt = two_pieces()
    async with connected(fake_engines(stt=stt), SessionSettings()) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, *PARTS)
            await client.until("response.done")
    assert client.events("transcript.delta") == []
    assert stt.prompts == [None, None] and stt.calls[1] > 1200 * 32  # the dropped speculation, then the whole


async def test_a_failed_piece_falls_back_to_the_whole_audio(autojump_clock):
    from voiceorch.engines.base import EngineError

    class FailFirst(FakeSTT):
        """Fails its first call; then says "whole" for the whole utterance, "part" for less."""

        async def transcribe(self, pcm, *, prompt=None):
            self.calls.append(len(pcm))
            await trio.sleep(self.delay)
            if len(self.calls) == 1:
                raise EngineError("stt_failed", "boom")
            return "whole" if len(pcm) > 1200 * 32 else "part"

    stt = FailFirst(delay=0.1)
    async with connected(fake_engines(stt=stt), PIECES) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, *PARTS)
            done = await client.until("response.done")
    assert done.status == "completed"
    assert [e.text for e in client.events("transcript.final")] == ["whole"]
    assert [e.delta for e in client.events("transcript.delta")] == ["part"]  # (the second piece's words)


async def test_transcription_deltas_in_the_realtime_dialect(autojump_clock):
    stt = two_pieces()
    async with realtime_connected(fake_engines(stt=stt), PIECES) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream24, client, *PARTS)
            await client.until("response.done")
    started = client.of_type("input_audio_buffer.speech_started")[0]
    deltas = client.of_type("conversation.item.input_audio_transcription.delta")
    assert [d["delta"] for d in deltas] == ["I'd like to book a table for", " four people."]
    assert {d["item_id"] for d in deltas} == {started["item_id"]}
    completed = client.of_type("conversation.item.input_audio_transcription.completed")[0]
    assert completed["transcript"] == "I'd like to book a table for four people."
    assert client.log.index(deltas[0]) < client.log.index(client.of_type("input_audio_buffer.committed")[0])
