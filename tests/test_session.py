"""The session and turn machinery with fake engines, under Trio's MockClock (autojump)."""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from session_harness import PUSH_TO_TALK, check_framing, connected, count_tasks, fake_engines
from voiceorch import protocol as p
from voiceorch.engines.base import EngineError
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, fake_pcm
from voiceorch.session import SessionSettings
from voiceorch.session.sentences import SentenceSplitter

REPLY = "Sure thing. Here is a short answer. Anything else?"
SENTENCES = ["Sure thing.", "Here is a short answer.", "Anything else?"]


# Every async test takes ``autojump_clock``: pytest-trio then runs it on Trio's MockClock.


def audio(ms: int) -> bytes:
    return b"\x01\x00" * (16 * ms)


async def test_text_turn_streams_text_then_audio_and_completes(autojump_clock):
    engines = fake_engines()
    async with connected(engines) as client:
        await client.send({"type": "input_text", "text": "Hi there"})
        done = await client.until("response.done")
    assert done.status == "completed"
    assert done.text == REPLY
    kinds = [e if isinstance(e, bytes) else e.TYPE for e in client.log]
    assert kinds[:3] == ["session.created", "response.created", "transcript.final"]
    assert client.events("transcript.final")[0].text == "Hi there"
    assert "".join(e.delta for e in client.events("response.text.delta")) == REPLY
    audio_bytes = b"".join(e for e in client.log if isinstance(e, bytes))
    assert audio_bytes == b"".join(fake_pcm(s, 60.0) for s in SENTENCES)
    assert all(len(e) <= 40 * 32 for e in client.log if isinstance(e, bytes))
    check_framing(client.log)
    m = done.metrics
    assert m.stt_ms is None  # a typed turn has no STT
    assert m.llm_ttft_ms == pytest.approx(100, abs=1)
    assert m.tts_first_audio_ms == pytest.approx(50, abs=1)
    # "Sure thing." ends when " Here" comes (0.14 s); its synthesis takes 0.05 s
    assert m.ttfb_ms == pytest.approx(190, abs=1)
    assert m.audio_ms == pytest.approx(len(audio_bytes) / 32)
    assert engines.tts.texts == SENTENCES


async def test_spoken_turn_transcribes_the_committed_audio(autojump_clock):
    engines = fake_engines(stt=FakeSTT(text="what time is it", delay=0.3))
    async with connected(engines) as client:
        for _ in range(10):
            await client.send(audio(100))
        await client.send({"type": "input_audio.commit"})
        committed = await client.until("input_audio.committed")
        done = await client.until("response.done")
    assert committed.audio_ms == 1000
    assert engines.stt.calls == [32_000]
    assert client.events("transcript.final")[0].text == "what time is it"
    assert done.status == "completed"
    assert done.metrics.stt_ms == pytest.approx(300, abs=1)
    assert done.metrics.ttfb_ms == pytest.approx(300 + 190, abs=1)


async def test_second_turn_sees_the_first_in_its_llm_request(autojump_clock):
    engines = fake_engines(stt=FakeSTT(texts=["my name is Ada", "what is my name"]))
    async with connected(engines) as client:
        for _ in range(2):
            await client.send(audio(500))
            await client.send({"type": "input_audio.commit"})
            await client.until("response.done")
    first, second = engines.llm.requests
    assert [m.role for m in first] == ["system", "user"]
    assert [(m.role, m.content) for m in second[1:]] == [
        ("user", "my name is Ada"),
        ("assistant", REPLY),
        ("user", "what is my name"),
    ]
    assert client.session.conversation.messages[-1].content == REPLY


async def test_session_update_changes_the_system_prompt_and_echoes_the_session(autojump_clock):
    engines = fake_engines()
    async with connected(engines) as client:
        await client.send({"type": "session.update", "session": {"instructions": "Speak like a pirate."}})
        updated = await client.until("session.updated")
        await client.send({"type": "input_text", "text": "hello"})
        await client.until("response.done")
    assert updated.session.instructions == "Speak like a pirate."
    assert engines.llm.requests[0][0].content == "Speak like a pirate."


async def _cancel_when(client, stage: str) -> None:
    """Send response.cancel at the given stage of the response in progress."""
    if stage == "stt":
        await trio.sleep(0.1)  # FakeSTT takes 0.2 s
    elif stage == "before_first_token":
        await client.until("transcript.final")
        await trio.sleep(0.05)  # the LLM's first token comes 0.1 s after the request
    elif stage == "mid_llm":
        await client.until("response.text.delta")
    elif stage == "mid_synthesis":
        await client.until("response.text.delta", delta=" thing.")
        await trio.sleep(0.5)  # FakeTTS below takes 1 s per sentence
    elif stage == "mid_audio":
        while not isinstance(await client.next(), bytes):
            pass
    await client.send({"type": "response.cancel"})


@pytest.mark.parametrize("stage", ["stt", "before_first_token", "mid_llm", "mid_synthesis", "mid_audio"])
async def test_cancel_at_each_stage_unwinds_the_whole_turn(autojump_clock, stage):
    tts = FakeTTS(delay=1.0 if stage == "mid_synthesis" else 0.05)
    engines = fake_engines(stt=FakeSTT(text="tell me something"), llm=FakeLLM(delta_delay=0.1), tts=tts)
    async with connected(engines) as client:
        await wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        await client.send(audio(300))
        await client.send({"type": "input_audio.commit"})
        await _cancel_when(client, stage)
        done = await client.until("response.done")
        assert done.status == "cancelled"
        # Nothing of the cancelled response after its response.done, and no task left behind:
        # wait long enough for every fake engine to have finished had it not been cancelled.
        await trio.sleep(10)
        await wait_all_tasks_blocked()
        assert count_tasks() == idle_tasks
        after_done = client.log[client.log.index(done) + 1 :]
        assert after_done == []
        check_framing(client.log)

        # The history holds exactly the sentences whose audio was sent in full.
        received = sum(len(e) for e in client.log if isinstance(e, bytes))
        heard = [s for s in SENTENCES if done.text and s in done.text]
        assert done.text == " ".join(heard)
        heard_bytes = sum(len(fake_pcm(s, 60.0)) for s in heard)
        assert heard_bytes <= received
        if len(heard) < len(SENTENCES):
            assert received < heard_bytes + len(fake_pcm(SENTENCES[len(heard)], 60.0))
        history = client.session.conversation.messages
        if stage == "stt":
            assert history == ()
        else:
            assert history[0].content == "tell me something"
            assert [m.content for m in history[1:]] == ([done.text] if done.text else [])
        if stage in ("mid_llm", "mid_synthesis"):
            assert engines.llm.closed_early == 1

        # The next turn works normally.
        engines.stt.text = "and now"
        await client.send(audio(300))
        await client.send({"type": "input_audio.commit"})
        nxt = await client.until("response.done")
        assert nxt.status == "completed" and nxt.text == REPLY
    assert engines.llm.requests[-1][-1].content == "and now"


async def test_a_new_turn_supersedes_the_response_in_progress(autojump_clock):
    engines = fake_engines(llm=FakeLLM(delta_delay=0.2))
    async with connected(engines) as client:
        await client.send({"type": "input_text", "text": "first question"})
        await client.until("response.text.delta")
        await client.send({"type": "input_text", "text": "second question"})
        first = await client.until("response.done")
        second = await client.until("response.done")
    assert (first.turn_id, first.status) == ("turn_1", "cancelled")
    assert (second.turn_id, second.status) == ("turn_2", "completed")
    check_framing(client.log)
    assert engines.llm.closed_early == 1


@pytest.mark.parametrize(
    "engine, code",
    [("stt", "stt_failed"), ("llm", "llm_error"), ("tts", "tts_failed")],
)
async def test_engine_failure_gives_an_error_and_the_session_goes_on(autojump_clock, engine, code):
    engines = fake_engines()
    async with connected(engines) as client:
        await client.send({"type": "input_text", "text": "earlier"})  # history before the failure
        await client.until("response.done")
        getattr(engines, engine).error = EngineError(code, f"{engine} broke")
        await client.send(audio(200))
        await client.send({"type": "input_audio.commit"})
        error = await client.until("error")
        done = await client.until("response.done")
        assert (error.code, error.turn_id) == (code, done.turn_id)
        assert done.status == "failed"
        getattr(engines, engine).error = None
        await client.send(audio(200))
        await client.send({"type": "input_audio.commit"})
        nxt = await client.until("response.done")
    assert nxt.status == "completed"
    # The history kept the turn before the failure.
    assert engines.llm.requests[-1][1].content == "earlier"


async def test_llm_failure_mid_stream_keeps_what_was_spoken(autojump_clock):
    llm = FakeLLM(error=EngineError("llm_error", "stream broke"), fail_after_deltas=6)
    async with connected(fake_engines(llm=llm)) as client:
        await client.send({"type": "input_text", "text": "go"})
        done = await client.until("response.done")
    assert done.status == "failed"
    assert [e.code for e in client.events("error")] == ["llm_error"]
    check_framing(client.log)


async def test_a_reply_cut_at_the_llm_token_limit_is_reported_as_truncated(autojump_clock):
    engines = fake_engines(llm=FakeLLM(finish_reason="length"))
    async with connected(engines) as client:
        await client.send({"type": "input_text", "text": "Tell me everything"})
        cut = await client.until("response.done")
        engines.llm.finish_reason = "stop"
        await client.send({"type": "input_text", "text": "Thanks"})
        whole = await client.until("response.done")
    assert (cut.status, cut.truncated, cut.text) == ("completed", True, REPLY)  # it played to its end
    assert (whole.status, whole.truncated) == ("completed", False)
    frames = [p.encode(e) for e in client.events("response.done")]
    assert '"truncated":true' in frames[0] and "truncated" not in frames[1]  # only sent when true
    check_framing(client.log)


async def test_no_speech_in_the_audio_is_an_error(autojump_clock):
    async with connected(fake_engines(stt=FakeSTT(text=""))) as client:
        await client.send(audio(200))
        await client.send({"type": "input_audio.commit"})
        error = await client.until("error")
        done = await client.until("response.done")
    assert error.code == "no_speech" and done.status == "failed"
    assert client.session.conversation.messages == ()


@pytest.mark.parametrize(
    "frame, code",
    [
        ("{not json", "invalid_json"),
        ('{"type": "no.such.event"}', "unknown_event_type"),
        ('{"type": "input_text", "text": 42}', "invalid_event"),
        ('{"type": "input_text"}', "invalid_event"),
        ('["input_text"]', "invalid_event"),
        ('{"type": "input_text", "text": "   "}', "invalid_event"),
        (b"\x01\x02\x03", "invalid_audio_frame"),
        ('{"type": "input_audio.commit"}', "input_audio_buffer_empty"),
        ('{"type": "response.cancel"}', "no_active_response"),
        ('{"type": "input_text", "text": "' + "x" * 70_000 + '"}', "message_too_large"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_the_session_goes_on(autojump_clock, frame, code):
    async with connected() as client:
        await client.send({"type": "input_text", "text": "remember this"})
        await client.until("response.done")
        await client.transport.send(frame)
        error = await client.until("error")
        assert error.code == code and error.message
        await client.send({"type": "input_text", "text": "still there?"})
        done = await client.until("response.done")
        assert done.status == "completed"
        assert client.session.conversation.messages[0].content == "remember this"


async def test_input_audio_beyond_the_cap_is_dropped_with_one_error(autojump_clock):
    engines = fake_engines()
    async with connected(
        engines, SessionSettings(max_input_audio_ms=1000, turn_detection=PUSH_TO_TALK.turn_detection)
    ) as client:
        for _ in range(15):
            await client.send(audio(100))
        await client.send({"type": "input_audio.commit"})
        committed = await client.until("input_audio.committed")
        await client.until("response.done")
    assert [e.code for e in client.events("error")] == ["input_audio_buffer_full"]
    assert committed.audio_ms == 1000
    assert engines.stt.calls == [32_000]


async def test_clear_drops_the_buffered_audio(autojump_clock):
    async with connected() as client:
        await client.send(audio(500))
        await client.send({"type": "input_audio.clear"})
        cleared = await client.until("input_audio.cleared")
        await client.send({"type": "input_audio.commit"})
        error = await client.until("error")
    assert cleared.audio_ms == 500
    assert error.code == "input_audio_buffer_empty"


async def test_a_client_that_stops_reading_is_cut_off_after_the_send_timeout(autojump_clock):
    from voiceorch.session import Session, memory_transport_pair

    server_end, client_end = memory_transport_pair()
    session = Session(
        server_end, fake_engines(), SessionSettings(send_timeout_s=5, turn_detection=PUSH_TO_TALK.turn_detection)
    )
    with trio.fail_after(60):
        await session.run()  # nobody reads session.created
    assert server_end.close_code == 1008
    assert "send timeout" in server_end.close_reason


async def test_the_session_ends_cleanly_when_the_client_leaves_mid_response(autojump_clock):
    engines = fake_engines(llm=FakeLLM(delta_delay=1.0))
    async with connected(engines) as client:
        await client.send({"type": "input_text", "text": "talk for a while"})
        await client.until("response.text.delta")
    # connected() closed the client's end: the session returned, its nursery is empty.
    assert engines.llm.closed_early == 1


def test_the_first_clause_is_spoken_early():
    splitter = SentenceSplitter()
    out = []
    for delta in ["Well, ", "the capital of France", ", as you know, is Paris", ". It is big, and old."]:
        out += splitter.feed(delta)
    out += splitter.flush()
    assert out == ["Well, the capital of France,", "as you know, is Paris.", "It is big, and old."]


def test_sentence_splitter_cuts_streamed_text_into_sentences():
    splitter = SentenceSplitter(max_chars=40, first_clause_chars=None)
    out = []
    for delta in ["Hello", " there! How", " are you", "? I am **fine**", ", thanks.\nNew"]:
        out += splitter.feed(delta)
    out += splitter.flush()
    assert out == ["Hello there!", "How are you?", "I am fine, thanks.", "New"]
    long = SentenceSplitter(max_chars=30)
    pieces = long.feed("This is a clause that runs on, and on, and it goes on without end")
    assert pieces and all(len(x) <= 40 for x in pieces)


async def test_an_idle_session_is_closed_but_not_while_a_reply_plays(autojump_clock):
    from voiceorch.session import Session, memory_transport_pair

    server_end, client_end = memory_transport_pair()
    settings = SessionSettings(idle_timeout_s=2, turn_detection=PUSH_TO_TALK.turn_detection)
    session = Session(server_end, fake_engines(tts=FakeTTS(ms_per_char=100)), settings)
    received = []
    done_at = []

    async def client() -> None:
        await client_end.receive()  # session.created
        await client_end.send('{"type": "input_text", "text": "talk to me"}')
        while True:  # then only listen: the reply lasts ~5 s, longer than the idle timeout
            try:
                received.append(await client_end.receive())
            except trio.EndOfChannel:
                return
            if isinstance(received[-1], str) and '"response.done"' in received[-1]:
                done_at.append(trio.current_time())

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            await session.run()
            closed_at = trio.current_time()
    done = [m for m in received if isinstance(m, str) and '"response.done"' in m]
    assert done and '"completed"' in done[0]  # the reply played out in full
    assert done_at[0] > 4.8  # it lasted longer than the idle timeout
    assert (server_end.close_code, server_end.close_reason) == (1000, "idle timeout")
    assert closed_at - done_at[0] == pytest.approx(2, abs=0.05)  # idle counts from its end


async def test_a_session_ends_at_its_maximum_duration(autojump_clock):
    from voiceorch.session import Session, memory_transport_pair

    server_end, client_end = memory_transport_pair()
    settings = SessionSettings(max_session_s=30, idle_timeout_s=1000, turn_detection=PUSH_TO_TALK.turn_detection)
    session = Session(server_end, fake_engines(), settings)

    async def chatty_client() -> None:
        await client_end.receive()
        while True:
            await client_end.send(b"\x00\x00" * 320)
            await trio.sleep(0.02)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chatty_client)
            await session.run()
            nursery.cancel_scope.cancel()
    assert server_end.close_code == 1008
    assert "maximum session duration" in server_end.close_reason


async def test_a_session_cancelled_from_outside_closes_with_1001(autojump_clock):
    from voiceorch.session import Session, memory_transport_pair

    server_end, client_end = memory_transport_pair(buffer=16)
    session = Session(server_end, fake_engines(), PUSH_TO_TALK)
    with trio.move_on_after(5):  # the server shutting down
        await session.run()
    assert (server_end.close_code, server_end.close_reason) == (1001, "server shutting down")


@pytest.mark.parametrize("engine, code", [("stt", "stt_timeout"), ("tts", "tts_timeout")])
async def test_an_engine_that_hangs_fails_the_turn_within_its_timeout(autojump_clock, engine, code):
    engines = fake_engines(stt=FakeSTT(delay=1000), tts=FakeTTS(delay=1000))
    settings = SessionSettings(turn_detection=PUSH_TO_TALK.turn_detection, stt_timeout_s=5, tts_timeout_s=3)
    if engine == "tts":
        engines.stt.delay = 0.1
    async with connected(engines, settings) as client:
        await client.send(audio(200))
        await client.send({"type": "input_audio.commit"})
        started = trio.current_time()
        error = await client.until("error")
        done = await client.until("response.done")
        failed_after = trio.current_time() - started
        engines.stt.delay, engines.tts.delay = 0.1, 0.05  # the engine is back
        await client.send({"type": "input_text", "text": "still there?"})
        nxt = await client.until("response.done")
    assert (error.code, error.turn_id, done.status) == (code, done.turn_id, "failed")
    assert failed_after == pytest.approx(5 if engine == "stt" else 3.1, abs=0.2)
    assert nxt.status == "completed"


async def test_while_draining_responses_in_progress_finish_and_no_new_one_starts(autojump_clock):
    async with connected() as client:
        await client.send({"type": "input_text", "text": "tell me"})
        await client.until("response.text.delta")
        client.session.stop_new_turns()
        async with trio.open_nursery() as nursery:
            waited = trio.Event()

            async def wait_for_responses() -> None:
                await client.session.wait_responses_done()
                waited.set()

            nursery.start_soon(wait_for_responses)
            await client.send({"type": "input_text", "text": "and another thing"})
            refused = await client.until("error")
            assert not waited.is_set()
            done = await client.until("response.done")
        assert waited.is_set()
        await client.session.wait_responses_done()  # nothing in progress: returns at once
    assert refused.code == "server_shutting_down"
    assert (done.turn_id, done.status, done.text) == ("turn_1", "completed", REPLY)
    assert [e.turn_id for e in client.events("response.created")] == ["turn_1"]


def test_a_full_memory_is_trimmed_to_half_so_the_prompt_start_stays_put():
    from voiceorch.session.history import Conversation

    memory = Conversation(instructions="be brief", max_messages=8, max_chars=10_000)
    starts, sizes = [], []
    for n in range(1, 13):
        memory.add_exchange(f"question {n}", f"answer {n}")
        starts.append(memory.messages[0].content)
        sizes.append(len(memory.messages))
    # Full at 4 exchanges; the 5th trims it to half (2 exchanges), then it grows again to 4.
    assert sizes == [2, 4, 6, 8, 4, 6, 8, 4, 6, 8, 4, 6]
    assert starts == ["question 1"] * 4 + ["question 4"] * 3 + ["question 7"] * 3 + ["question 10"] * 2
    by_chars = Conversation(max_messages=100, max_chars=40)
    for n in range(1, 5):
        by_chars.add_exchange(f"q{n}", "ten chars.")  # 12 characters an exchange
    assert [m.content for m in by_chars.messages] == ["q4", "ten chars."]  # 48 > 40: down to <= 20
    huge = Conversation(max_messages=20, max_chars=30)
    huge.add_exchange("a question of thirty-one chars", "!")
    assert huge.messages == ()
