"""Server VAD and barge-in with fake engines under Trio's MockClock (autojump).

Fake speech is 16 kHz PCM at amplitude 1000 and silence is zeros; FakeVAD tells them apart.
Audio is streamed in 20 ms frames at real time (MockClock time), as a microphone would.
"""

from __future__ import annotations

import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from session_harness import check_framing, connected, count_tasks, fake_engines
from voiceorch import protocol as p
from voiceorch.engines.fakes import FakeLLM, FakeSTT, FakeTTS, FakeVAD, fake_pcm
from voiceorch.session import SessionSettings
from voiceorch.session.playback import Playback
from voiceorch.session.speech_detector import SpeechDetector, SpeechStarted, SpeechStopped

SENTENCES = ["Sure thing.", "Here is a short answer.", "Anything else?"]
REPLY = " ".join(SENTENCES)
VAD = SessionSettings()  # server VAD is the default
#: Speech over a reply ends it at once (the default pauses it and decides: test_overlap.py).
IMMEDIATE = SessionSettings(turn_detection=p.TurnDetection(interruption="immediate"))
FRAME = 20
N_INTERRUPTED = 1000


def speech(ms: int) -> bytes:
    return (1000).to_bytes(2, "little", signed=True) * (16 * ms)


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (16 * ms)


async def stream(client, *parts: tuple[str, int]) -> None:
    """Send ("speech"|"silence", ms) parts in 20 ms frames at real time, through the client's
    one microphone (a stream started while another plays follows it)."""
    async with client.microphone:
        for kind, ms in parts:
            for _ in range(ms // FRAME):
                await client.send(speech(FRAME) if kind == "speech" else silence(FRAME))
                await trio.sleep(FRAME / 1000)


# --- the detector and the playback clock alone ---------------------------------------------


def test_detector_decides_start_after_min_speech_and_stop_after_the_silence_window():
    detector = SpeechDetector(FakeVAD().new_stream(), min_speech_ms=150, silence_ms=500)
    decisions = detector.feed(silence(320))
    assert decisions == [] and not detector.in_speech
    decisions = detector.feed(speech(96))  # 3 chunks: not yet enough
    assert decisions == []
    decisions = detector.feed(speech(64))  # 5 chunks = 160 ms >= 150 ms
    assert decisions == [SpeechStarted(320.0)] and detector.in_speech
    assert detector.speech_ms == 160
    decisions = detector.feed(silence(320) + speech(64) + silence(480))  # a pause shorter than the window
    assert decisions == []
    decisions = detector.feed(silence(64))
    assert decisions == [SpeechStopped(864.0)] and not detector.in_speech
    assert detector.fed_ms == 1408


def test_detector_ignores_a_click_shorter_than_min_speech():
    detector = SpeechDetector(FakeVAD().new_stream(), min_speech_ms=150, silence_ms=500)
    assert detector.feed(speech(64) + silence(640) + speech(96) + silence(640)) == []


def test_detector_keeps_partial_chunks_for_the_next_feed():
    detector = SpeechDetector(FakeVAD().new_stream(), min_speech_ms=32, silence_ms=64)
    out = []
    for _ in range(10):
        out += detector.feed(speech(10))
    assert out == [SpeechStarted(0.0)]
    assert detector.fed_ms == 96


def test_playback_estimates_what_was_played_across_gaps():
    playback = Playback()
    playback.add_sentence("one two three four", 400)
    for i in range(10):
        playback.on_sent(10.0 + i * 0.01, 40)  # sent faster than real time: queued at the client
    assert playback.play_end == pytest.approx(10.4)
    assert playback.played_ms(10.2) == pytest.approx(200)
    playback.add_sentence("five six", 200)
    playback.on_sent(11.0, 200)  # the client ran dry from 10.4 to 11.0
    assert playback.played_ms(10.7) == pytest.approx(400)
    assert playback.played_ms(11.1) == pytest.approx(500)
    assert playback.heard_text(200) == "one two"
    assert playback.heard_text(400) == "one two three four"
    assert playback.heard_text(500) == "one two three four five"
    assert playback.heard_text(600) == "one two three four five six"


# --- the session under server VAD -------------------------------------------------------------


async def test_speech_then_silence_ends_the_turn_and_starts_the_response(autojump_clock):
    engines = fake_engines(stt=FakeSTT(text="what is the weather"))
    async with connected(engines, VAD) as client:
        await stream(client, ("silence", 2000), ("speech", 1000), ("silence", 800))
        started = await client.until("input_audio.speech_started")
        stopped = await client.until("input_audio.speech_stopped")
        committed = await client.until("input_audio.committed")
        done = await client.until("response.done")
    assert started.audio_ms == pytest.approx(2000, abs=32)
    assert stopped.audio_ms == pytest.approx(3000, abs=32)
    assert done.status == "completed" and done.text == REPLY
    # STT got the prefix padding (300 ms), the speech and the start of the pause (the turn was
    # answered speculatively from 160 ms into the pause), not the 2 s before.
    assert committed.audio_ms == pytest.approx(300 + 1000 + 160, abs=50)
    assert engines.stt.calls == [committed.audio_ms * 32]
    check_framing(client.log)


async def test_reply_audio_is_paced_to_real_time_plus_the_lead(autojump_clock):
    async with connected(fake_engines(), SessionSettings(playback_lead_ms=200)) as client:
        await client.send({"type": "input_text", "text": "hi"})
        first_audio_at = None
        received_ms = 0.0
        while True:
            item = await client.next()
            if isinstance(item, bytes):
                now = trio.current_time()
                first_audio_at = first_audio_at or now
                received_ms += len(item) / 32
                # never more than the lead ahead of real-time playback (plus one frame)
                assert received_ms <= (now - first_audio_at) * 1000 + 200 + 40 + 1e-6
            elif item.TYPE == "response.done":
                done = item
                break
    total_ms = sum(len(fake_pcm(s, 60.0)) for s in SENTENCES) / 32
    assert received_ms == pytest.approx(total_ms)
    # response.done comes once the client has played it all
    assert done.metrics.total_ms >= done.metrics.ttfb_ms + total_ms - 1


STAGES = ["stt", "before_first_token", "mid_llm", "mid_synthesis", "mid_playback", "sentence_boundary"]


def _engines_for(stage: str):
    return fake_engines(
        stt=FakeSTT(texts=["tell me something", "stop there"], delay=1.0 if stage == "stt" else 0.2),
        llm=FakeLLM(
            first_delay=1.0 if stage == "before_first_token" else 0.1,
            delta_delay=0.3 if stage == "mid_llm" else 0.02,
        ),
        tts=FakeTTS(
            delay=1.0 if stage == "mid_synthesis" else 0.05,
            delays=[0.05, 3.0] if stage == "sentence_boundary" else [],
        ),
    )


async def _wait_for_stage(client, stage: str) -> None:
    if stage == "stt":
        await client.until("input_audio.committed")
    elif stage == "before_first_token":
        await client.until("transcript.final")
    elif stage == "mid_llm":
        await client.until("response.text.delta")
    elif stage == "mid_synthesis":
        # "Sure thing." is being spoken (the deltas written in the pause come joined)
        while " Here" not in "".join(d.delta for d in client.events("response.text.delta")):
            await client.until("response.text.delta")
    elif stage in ("mid_playback", "sentence_boundary"):
        while not isinstance(await client.next(), bytes):
            pass
        if stage == "sentence_boundary":
            # "Sure thing." lasts 660 ms; the next sentence takes 3 s to synthesize. Speak so
            # that the interruption (250 ms into the speech) falls after the first sentence.
            await trio.sleep(0.5)


@pytest.mark.parametrize("stage", STAGES)
async def test_barge_in_at_each_stage_unwinds_the_turn_and_keeps_only_what_was_heard(autojump_clock, stage):
    engines = _engines_for(stage)
    async with connected(engines, IMMEDIATE) as client:
        await wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 600), ("silence", 700))
            await _wait_for_stage(client, stage)
            await nursery.start(_speak_over, client)
        interrupted = await client.until("response.interrupted")
        done = await client.until("response.done", turn_id=interrupted.turn_id)
        history = client.session.conversation.messages

        # Nothing of the interrupted response after response.interrupted, and then its done.
        after = client.log[client.log.index(interrupted) + 1 :]
        assert not any(isinstance(item, bytes) for item in after[: after.index(done)])
        assert done.status == "interrupted" and done.text == interrupted.heard_text
        check_framing(client.log)

        # The history holds exactly what was heard.
        if stage == "stt":
            assert history == ()
        else:
            assert history[0].content == "tell me something"
            assert [m.content for m in history[1:]] == ([done.text] if done.text else [])
        expected = {"sentence_boundary": "Sure thing.", "mid_playback": None}.get(stage, "")
        if expected is not None:
            assert done.text == expected
        else:
            assert done.text in ("", "Sure", "Sure thing.")
            assert 0 < interrupted.played_ms < 660
        if stage in ("before_first_token", "mid_llm"):
            assert engines.llm.closed_early == 1

        # The speech that interrupted becomes the next turn, answered normally.
        nxt = await client.until("response.done")
        assert nxt.status == "completed" and nxt.text == REPLY
        # (FakeSTT hands out its next text only when a transcription completes.)
        expected_next = "tell me something" if stage == "stt" else "stop there"
        assert client.events("transcript.final")[-1].text == expected_next
        await trio.sleep(5)
        await wait_all_tasks_blocked()
        assert count_tasks() == idle_tasks
    check_framing(client.log)


async def _speak_over(client, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    await stream(client, ("speech", 500), ("silence", 700))


async def test_a_cough_shorter_than_the_interrupt_threshold_does_not_cut_the_reply(autojump_clock):
    settings = SessionSettings(turn_detection=p.TurnDetection(min_speech_duration_ms=100, interrupt_min_speech_ms=400))
    async with connected(fake_engines(), settings) as client:
        await stream(client, ("speech", 600), ("silence", 600))
        while not isinstance(await client.next(), bytes):
            pass
        await stream(client, ("speech", 200), ("silence", 700))  # a cough, and silence after it
        await client.until("input_audio.speech_stopped")
        done = await client.until("response.done")
        await trio.sleep(5)
    assert done.status == "completed" and done.text == REPLY
    assert client.events("response.interrupted") == []
    # The cough was not taken for a turn of its own.
    assert [e.turn_id for e in client.events("response.created")] == ["turn_1"]


async def test_interrupt_response_false_lets_the_reply_finish(autojump_clock):
    async with connected(fake_engines(stt=FakeSTT(texts=["one", "two"])), VAD) as client:
        await client.send({"type": "session.update", "session": {"turn_detection": {"interrupt_response": False}}})
        updated = await client.until("session.updated")
        assert updated.session.turn_detection.interrupt_response is False
        assert updated.session.turn_detection.silence_duration_ms == 500  # omitted fields keep their value
        await client.send({"type": "input_text", "text": "hello"})
        while not isinstance(await client.next(), bytes):
            pass
        await stream(client, ("speech", 400))
        await client.until("input_audio.speech_started")
        await stream(client, ("speech", 400), ("silence", 600))
        first = await client.until("response.done")
        second = await client.until("response.done")
        assert client.events("response.interrupted") == []
        # The speech became a turn of its own, answered after the reply it did not interrupt.
        assert (first.status, second.status) == ("completed", "completed")
        assert client.events("transcript.final")[-1].text == "one"


async def test_the_clients_playback_position_wins_over_the_estimate(autojump_clock):
    async with connected(fake_engines(stt=FakeSTT(texts=["question", "wait"])), VAD) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 600), ("silence", 700))
            while not isinstance(await client.next(), bytes):
                pass
            await trio.sleep(1.5)  # well into the second sentence by the server's estimate
            nursery.start_soon(stream, client, ("speech", 500), ("silence", 700))
            interrupted = await client.until("response.interrupted")
            assert interrupted.heard_text.startswith("Sure thing. Here")
            # The client had really played only 500 ms (its buffer started late, say).
            await client.send({"type": "playback.position", "turn_id": interrupted.turn_id, "played_ms": 500})
            await client.until("response.done", turn_id=interrupted.turn_id)
            await wait_all_tasks_blocked()
            assert [m.content for m in client.session.conversation.messages] == ["question", "Sure"]


async def test_switching_to_push_to_talk_turns_the_detector_off(autojump_clock):
    async with connected(fake_engines(), VAD) as client:
        await client.send({"type": "session.update", "session": {"turn_detection": {"type": "none"}}})
        await client.until("session.updated")
        await stream(client, ("speech", 600), ("silence", 800))
        assert client.events("input_audio.speech_started") == []
        await client.send({"type": "input_audio.commit"})
        committed = await client.until("input_audio.committed")
        assert committed.audio_ms == 1400
        done = await client.until("response.done")
        assert done.status == "completed"


async def test_response_cancel_and_clear_keep_working_under_server_vad(autojump_clock):
    async with connected(fake_engines(), VAD) as client:
        await stream(client, ("speech", 600), ("silence", 600))
        while not isinstance(await client.next(), bytes):
            pass
        await client.send({"type": "response.cancel"})
        done = await client.until("response.done")
        assert done.status == "cancelled"
        assert client.log[client.log.index(done) + 1 :] == []
        await stream(client, ("speech", 300))
        await client.send({"type": "input_audio.clear"})
        cleared = await client.until("input_audio.cleared")
        await stream(client, ("silence", 800))
        after = client.log[client.log.index(cleared) :]
        assert [e for e in after if not isinstance(e, bytes) and e.TYPE == "input_audio.speech_stopped"] == []


async def test_a_thousand_interrupted_turns_leave_nothing_behind(autojump_clock):
    engines = fake_engines(
        stt=FakeSTT(delay=0.05), llm=FakeLLM(first_delay=0.05, delta_delay=0.01), tts=FakeTTS(delay=0.01)
    )
    async with connected(engines, VAD) as client:
        await wait_all_tasks_blocked()
        idle_tasks = count_tasks()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream, client, ("speech", 300), ("silence", 600))
            for _ in range(N_INTERRUPTED):
                while not isinstance(await client.next(), bytes):
                    pass
                # speak over the reply: it is interrupted, and this speech is the next turn
                nursery.start_soon(stream, client, ("speech", 300), ("silence", 600))
                await client.until("response.interrupted")
            await client.until("response.done")
        await client.until("response.done")  # the last turn, not interrupted
        await wait_all_tasks_blocked()
        assert count_tasks() == idle_tasks
        assert len(client.events("response.interrupted")) == N_INTERRUPTED
        assert len(engines.llm.requests) == N_INTERRUPTED + 1
        session = client.session
        assert session._unfinished == []
        assert session._turns_send.statistics().current_buffer_used == 0
        assert session._turns.input_bytes <= (300 + 150 + 64) * 32
        # The conversation stays bounded.
        assert len(session.conversation.messages) <= session.settings.history_max_messages
    check_framing(client.log)


async def test_work_starts_inside_the_silence_window_and_waits_for_the_turn_to_end(autojump_clock):
    engines = fake_engines(stt=FakeSTT(text="a question", delay=0.3))
    async with connected(engines, VAD) as client:
        await stream(client, ("speech", 1000), ("silence", 800))
        await client.until("input_audio.speech_stopped")
        done = await client.until("response.done")
    # Nothing of the response came before the turn had ended (the silence window closed).
    kinds = [e if isinstance(e, bytes) else e.TYPE for e in client.log]
    assert kinds.index("input_audio.speech_stopped") < kinds.index("response.created")
    first_audio = next(i for i, e in enumerate(kinds) if isinstance(e, bytes))
    assert kinds.index("input_audio.speech_stopped") < first_audio
    # STT (0.3 s) and the LLM ran inside the 500 ms window: audio follows the end of the turn
    # sooner than STT + LLM first token + synthesis (0.3 + 0.1 + 0.07 s) would take after it.
    assert done.metrics.ttfb_ms < 300
    assert done.status == "completed" and done.text == REPLY
    assert client.events("transcript.final")[0].text == "a question"


async def test_the_deltas_a_speculation_held_back_go_out_joined(autojump_clock):
    # The whole reply is written in the pause (STT 50 ms, LLM 10 ms a word): its 11 deltas are
    # held until the window closes, then go to the client as one delta, before the audio.
    engines = fake_engines(stt=FakeSTT(text="a question", delay=0.05), llm=FakeLLM(first_delay=0.01, delta_delay=0.01))
    async with connected(engines, VAD) as client:
        await stream(client, ("speech", 1000), ("silence", 800))
        done = await client.until("response.done")
        # The next reply is not speculated (typed): its deltas come one by one as written.
        await client.send({"type": "input_text", "text": "again"})
        await client.until("response.done")
    assert done.status == "completed"
    kinds = [e if isinstance(e, bytes) else e.TYPE for e in client.log]
    first, second = [e for e in client.log if getattr(e, "TYPE", "") == "response.created"]
    deltas = client.events("response.text.delta")
    assert [d.delta for d in deltas if d.turn_id == first.turn_id] == [REPLY]
    assert "".join(d.delta for d in deltas if d.turn_id == second.turn_id) == REPLY
    assert len([d for d in deltas if d.turn_id == second.turn_id]) == len(REPLY.split(" "))
    first_audio = next(i for i, e in enumerate(kinds) if isinstance(e, bytes))
    assert kinds.index("response.text.delta") < first_audio


async def test_speech_resuming_in_the_pause_drops_the_speculative_turn_without_a_trace(autojump_clock):
    engines = fake_engines(stt=FakeSTT(texts=["first half", "the whole sentence"], delay=0.1))
    async with connected(engines, VAD) as client:
        # a 300 ms pause: long enough to speculate (160 ms), shorter than the window (500 ms)
        await stream(client, ("speech", 600), ("silence", 300), ("speech", 600), ("silence", 800))
        done = await client.until("response.done")
        await trio.sleep(5)
    assert done.status == "completed" and done.turn_id == "turn_1"
    assert [e.turn_id for e in client.events("response.created")] == ["turn_1"]
    # The dropped speculation was transcribed ("first half") but never reached the client or
    # the history; the real turn covers the whole utterance.
    assert len(engines.stt.calls) == 2 and engines.stt.calls[1] > engines.stt.calls[0]
    assert [e.text for e in client.events("transcript.final")] == ["the whole sentence"]
    assert client.session.conversation.messages[0].content == "the whole sentence"
    assert len(engines.llm.requests) == 2 and engines.llm.closed_early == 1


async def test_speech_resuming_after_the_window_joins_the_untranscribed_turn(autojump_clock):
    # The user pauses longer than the silence window, then goes on while the first part is
    # still being transcribed: that turn is interrupted, and its audio leads the next turn.
    engines = fake_engines(stt=FakeSTT(texts=["the whole thought"], delay=1.0))
    async with connected(engines, IMMEDIATE) as client:
        await stream(client, ("speech", 600), ("silence", 600), ("speech", 600), ("silence", 800))
        first = await client.until("response.done")
        second = await client.until("response.done")
    assert first.status == "interrupted" and second.status == "completed"
    assert client.events("transcript.final")[-1].text == "the whole thought"
    first_audio, *_, last_audio = engines.stt.calls
    assert last_audio > first_audio + 600 * 32  # both parts went to STT together
    assert client.session.conversation.messages[0].content == "the whole thought"


async def test_a_full_input_buffer_under_server_vad_still_ends_the_turn(autojump_clock):
    settings = SessionSettings(max_input_audio_ms=1000)
    engines = fake_engines()
    async with connected(engines, settings) as client:
        await stream(client, ("speech", 1500), ("silence", 800))
        error = await client.until("error")
        done = await client.until("response.done")
    assert error.code == "input_audio_buffer_full"
    assert done.status == "completed"
    assert engines.stt.calls == [1000 * 32]
