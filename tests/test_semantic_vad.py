"""``semantic_vad`` in a whole session, in both dialects (v1 and Realtime), with fake engines
(a scripted end-of-turn model, FakeVAD, FakeSTT) under Trio's MockClock (autojump)."""

from __future__ import annotations

import trio

from session_harness import connected, fake_engines
from test_barge_in import stream
from test_realtime_session import realtime_connected
from test_realtime_session import stream as stream24
from voiceorch import protocol as p
from voiceorch.engines.base import EngineError
from voiceorch.engines.fakes import FakeEndOfTurn, FakeSTT, FakeTextEndOfTurn
from voiceorch.session import SessionSettings

SEMANTIC = SessionSettings(turn_detection=p.TurnDetection(type="semantic_vad"))


async def test_a_finished_question_ends_about_200_ms_into_the_pause(autojump_clock):
    model = FakeEndOfTurn(verdicts=[0.9], delay=0.05)
    engines = fake_engines(stt=FakeSTT(text="What time is it?", delay=0.05), end_of_turn=model)
    async with connected(engines, SEMANTIC) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 600), ("silence", 2000))
            await client.until("input_audio.speech_stopped")
            await trio.sleep(0.6)  # (past the end of the speech, by the clock)
            # The turn ended while the silence had not reached server VAD's 500 ms.
            committed = client.events("input_audio.committed")
            assert len(committed) == 1 and committed[0].turn_id == "turn_1"
            done = await client.until("response.done")
    stopped = client.events("input_audio.speech_stopped")[0]
    assert 600 <= stopped.audio_ms <= 640  # dated at the start of the silence
    assert done.status == "completed"
    assert [e.text for e in client.events("transcript.final")] == ["What time is it?"]
    assert len(model.judged) == 1 and len(engines.stt.calls) == 1  # one judgement, one STT pass


async def commit_times(engines, settings, parts) -> tuple[list[float], object]:
    """When (MockClock s, from the first frame) each ``input_audio.committed`` came."""
    times = []
    async with connected(engines, settings) as client:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, *parts)
            with trio.move_on_after(sum(ms for _, ms in parts) / 1000 + 1):
                while True:
                    await client.until("input_audio.committed")
                    times.append(trio.current_time() - start)
        with trio.fail_after(30):  # every committed turn's response ends (some may have already)
            while len(client.events("response.done")) < len(times):
                await client.until("response.done")
    return times, client


async def test_a_finished_question_is_committed_earlier_than_under_server_vad(autojump_clock):
    parts = [("speech", 600), ("silence", 1500)]
    semantic, _ = await commit_times(
        fake_engines(stt=FakeSTT(text="What time is it?", delay=0.05), end_of_turn=FakeEndOfTurn([0.9])),
        SEMANTIC,
        parts,
    )
    server, _ = await commit_times(
        fake_engines(stt=FakeSTT(text="What time is it?", delay=0.05)), SessionSettings(), parts
    )
    assert len(semantic) == len(server) == 1
    assert semantic[0] - 0.6 < 0.3 < server[0] - 0.6  # about 200 ms of silence against 500


async def test_a_sentence_cut_by_a_long_pause_waits_for_the_rest(autojump_clock):
    parts = [("speech", 600), ("silence", 1200), ("speech", 600), ("silence", 1500)]

    def engines():
        texts = ["I'd like to book a table for", "I'd like to book a table for four people."]
        return fake_engines(stt=FakeSTT(texts=list(texts), delay=0.1), end_of_turn=FakeEndOfTurn([0.95]))

    semantic, client = await commit_times(engines(), SEMANTIC, parts)
    assert len(semantic) == 1  # one turn: the pause of 1.2 s did not end it
    assert [e.text for e in client.events("transcript.final")] == ["I'd like to book a table for four people."]
    assert [e.turn_id for e in client.events("response.created")] == ["turn_1"]
    assert semantic[0] > 2.4  # after the second half of the speech (it ends at 2.4 s)
    # Server VAD (500 ms) cuts the same speech: it commits the first half in the pause.
    server, _ = await commit_times(engines(), SessionSettings(), parts)
    assert server[0] < 1.8  # before the speech goes on at 1.8 s


async def test_eagerness_is_validated_and_echoed(autojump_clock):
    async with connected(fake_engines(), SessionSettings()) as client:
        await client.send({"type": "session.update", "session": {"turn_detection": {"eagerness": "eager"}}})
        error = await client.until("error")
        assert error.code == "invalid_event" and "eagerness" in error.message
        await client.send(
            {"type": "session.update", "session": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}
        )
        updated = await client.until("session.updated")
    assert (updated.session.turn_detection.type, updated.session.turn_detection.eagerness) == ("semantic_vad", "low")


async def test_semantic_vad_in_the_realtime_dialect(autojump_clock):
    model = FakeEndOfTurn(verdicts=[0.9])
    engines = fake_engines(stt=FakeSTT(text="What time is it?", delay=0.05), end_of_turn=model)
    async with realtime_connected(engines) as client:
        update = {"type": "semantic_vad", "eagerness": "medium"}
        await client.send({"type": "session.update", "session": {"audio": {"input": {"turn_detection": update}}}})
        updated = await client.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream24, client, ("speech", 600), ("silence", 1500))
            start = trio.current_time()
            await client.until("input_audio_buffer.speech_stopped")
            committed = await client.until("input_audio_buffer.committed")
            committed_at = trio.current_time() - start
            done = await client.until("response.done")
    assert committed_at - 0.6 < 0.3
    assert done["response"]["status"] == "completed"
    assert committed["item_id"] == client.of_type("input_audio_buffer.speech_started")[0]["item_id"]
    assert len(model.judged) == 1


async def test_words_written_as_finished_are_held_by_the_text_model(autojump_clock):
    """tiny.en writes a cut sentence as a finished one ("Call my sister."), and the audio model
    agrees; the text end-of-turn model's low score of those words holds the turn."""
    parts = [("speech", 600), ("silence", 1200), ("speech", 600), ("silence", 1500)]
    texts = ["Call my sister.", "Call my sister and tell her I will be late."]

    def engines(text_model):
        return fake_engines(
            stt=FakeSTT(texts=list(texts), delay=0.1),
            end_of_turn=FakeEndOfTurn([0.95]),
            text_end_of_turn=text_model,
        )

    text_model = FakeTextEndOfTurn(scores={"Call my sister.": 0.01}, default=0.6)
    held, client = await commit_times(engines(text_model), SEMANTIC, parts)
    assert len(held) == 1 and held[0] > 2.4  # one turn, after the second half (it ends at 2.4 s)
    assert [e.text for e in client.events("transcript.final")] == [texts[1]]
    assert text_model.asked == texts  # the words of each pause were scored
    # Without the text model the same speech is cut in the pause.
    cut, client = await commit_times(engines(None), SEMANTIC, parts)
    assert cut[0] < 1.8 and client.events("transcript.final")[0].text == "Call my sister."


async def test_a_text_model_that_fails_leaves_the_words_to_the_rule(autojump_clock):
    text_model = FakeTextEndOfTurn(error=EngineError("turn_model_failed", "boom"))
    engines = fake_engines(
        stt=FakeSTT(text="What time is it?", delay=0.05), end_of_turn=FakeEndOfTurn([0.9]), text_end_of_turn=text_model
    )
    committed, client = await commit_times(engines, SEMANTIC, [("speech", 600), ("silence", 1500)])
    assert len(committed) == 1 and committed[0] - 0.6 < 0.4  # ended early all the same
    assert text_model.asked == ["What time is it?"]
    assert client.events("response.done")[0].status == "completed"
    assert client.events("error") == []  # the model's failure is the server's to log, not the client's
